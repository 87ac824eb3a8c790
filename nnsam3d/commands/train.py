"""``nnsam3d_train DATASET FOLD``: train one cross-validation fold of 3DMedSAM."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.model.network import COMPILE_MODES
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.request import TrainingRequest
from nnsam3d.trainers.launch import launch_training
from nnsam3d.trainers.registry import DEFAULT_TRAINER
from nnsam3d.trainers.splits import parse_fold


def _fold(text: str) -> str:
    try:
        return parse_fold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_train",
        description="Train one fold of 3DMedSAM on a preprocessed dataset (run nnsam3d_plan_and_preprocess first). "
        "Results go to $nnSAM3D_results/DatasetXXX_Name/TRAINER__PLANS/fold_K/.",
    )
    parser.add_argument("dataset", help="dataset number (e.g. 501) or full name (Dataset501_Liver)")
    parser.add_argument("fold", type=_fold, help="cross-validation fold 0-4, or 'all' to train on every case")
    parser.add_argument("-tr", dest="trainer", default=DEFAULT_TRAINER,
                        help=f"trainer class name (default {DEFAULT_TRAINER}), e.g. nnSAM3DTrainer_fromScratch, "
                        "or package.module:ClassName for your own")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME,
                        help=f"plans name (default {DEFAULT_PLANS_NAME}; file <preprocessed dataset>/<PLANS>.json)")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the trainer's)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="training iterations per epoch (default: the trainer's)")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from the fold's latest checkpoint; with a larger --epochs, extends a finished run")
    parser.add_argument("--val", dest="validation_only", action="store_true",
                        help="only run the final validation, with checkpoint_final.pth")
    parser.add_argument("--npz", dest="save_probabilities", action="store_true",
                        help="validation also saves class probabilities (float16 .npz) for ensembling")
    parser.add_argument("--device", "-device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU (default)")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="SAM-format checkpoint to start from (default: the official file of the plan's "
                        "backbone in $nnSAM3D_sam_checkpoints)")
    parser.add_argument("--num-gpus", "-num_gpus", type=int, default=1,
                        help="train data-parallel with this many processes on this node (under torchrun, "
                        "torchrun decides instead)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="augmentation worker processes (default: 0 on CPU, up to 8 per GPU)")
    parser.add_argument("--time-budget-minutes", type=float, default=None,
                        help="stop after the epoch in which this much training time is used up, then "
                        "finish as if the schedule had ended (final checkpoint and validation)")
    parser.add_argument("--splits", dest="splits_file", default=None, metavar="SPLITS_JSON",
                        help="a splits_final.json (nnU-Net's, say) to use as this dataset's folds; default: the "
                        "dataset's own, else nnU-Net's from $nnUNet_preprocessed, else nnU-Net's 5 folds")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile of the network (off by default; pays a compilation "
                        "of a minute or more at the start, can speed up long GPU runs)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile's mode (implies --compile): reduce-overhead replays the step as CUDA "
                        "graphs, max-autotune also tries kernel choices while compiling (default: default)")
    parser.add_argument("--channels-last", action="store_true",
                        help="the decoder's 3D convolutions channels-last (NDHWC), cuDNN's preferred layout for bf16; "
                        "measure it on your GPU with benchmarks/step_variants.py")
    return parser


def request_from_arguments(arguments: argparse.Namespace) -> TrainingRequest:
    return TrainingRequest(
        dataset=arguments.dataset,
        fold=arguments.fold,
        plans_name=arguments.plans,
        num_epochs=arguments.epochs,
        iterations_per_epoch=arguments.iterations_per_epoch,
        continue_training=arguments.continue_training,
        validation_only=arguments.validation_only,
        save_probabilities=arguments.save_probabilities,
        device=arguments.device,
        sam_checkpoint=arguments.sam_checkpoint,
        seed=arguments.seed,
        num_workers=arguments.num_workers,
        time_budget_minutes=arguments.time_budget_minutes,
        splits_file=arguments.splits_file,
        compile=arguments.compile or arguments.compile_mode is not None,
        compile_mode=arguments.compile_mode or "default",
        channels_last=arguments.channels_last,
    )


def train(arguments: argparse.Namespace) -> int:
    launch_training(arguments.trainer, request_from_arguments(arguments), arguments.num_gpus)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError: bad option combinations (device, --num-gpus, ...) found while setting up
    return run_command(build_parser(), train, argv, user_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
