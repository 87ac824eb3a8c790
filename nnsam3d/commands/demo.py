"""``nnsam3d_demo``: the whole pipeline on a generated dataset, in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.train import USER_ERRORS as TRAINING_ERRORS
from nnsam3d.demo.run_demo import DemoOptions, describe_outputs, run_demo
from nnsam3d.evaluation.evaluate_folder import format_summary_table
from nnsam3d.planners.integrity import DatasetIntegrityError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnsam3d_demo",
        description="Generate a synthetic CT-like dataset (liver, kidney, lesion; anisotropic spacing, mixed "
        "orientations), plan, preprocess, train fold 0 within a time budget, predict the test images and "
        "print their Dice per class. Re-running with the same --workdir resumes.",
    )
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="training time budget in minutes (default 5; the other stages add about a minute)")
    parser.add_argument("--workdir", type=Path, default=Path("nnsam3d_demo"),
                        help="folder for the dataset, preprocessed data, model and predictions (default ./nnsam3d_demo)")
    parser.add_argument("--backbone", default="vit_tiny",
                        help="vit_tiny (default; from scratch, for CPUs) or a SAM backbone such as vit_b (needs its "
                        "checkpoint and, to be quick, a GPU)")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="SAM checkpoint file for a SAM backbone (default: looked up in $nnSAM3D_sam_checkpoints)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU (default)")
    parser.add_argument("--iterations-per-epoch", type=int, default=25,
                        help="training iterations per epoch (default 25: many short epochs in the budget)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2,
                        help="processes for preprocessing and evaluation (default 2)")
    parser.add_argument("--retrain", action="store_true", help="train fold 0 again even if it finished before")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.minutes <= 0:
        print("nnsam3d_demo: error: --minutes must be positive", file=sys.stderr)
        return 2
    options = DemoOptions(
        workdir=arguments.workdir,
        minutes=arguments.minutes,
        backbone=arguments.backbone,
        sam_checkpoint=arguments.sam_checkpoint,
        device=arguments.device,
        num_processes=arguments.num_processes,
        iterations_per_epoch=arguments.iterations_per_epoch,
        retrain=arguments.retrain,
    )
    try:
        result = run_demo(options)
    except (*TRAINING_ERRORS, DatasetIntegrityError, ValueError) as error:
        print(f"nnsam3d_demo: error: {error}", file=sys.stderr)
        return 1
    print("\nDice on the held-out test images:")
    print(format_summary_table(result.summary))
    print(f"\nDemo finished in {result.seconds / 60:.1f} minutes. Outputs:")
    print(describe_outputs(result, options.workdir))
    print(f"\nReport of the test predictions (open in a browser): {result.report_file.as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
