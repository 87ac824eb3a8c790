"""``nnsam3d_demo``: the whole pipeline on a generated dataset, in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.demo.run_demo import (
    DEMO_DATASETS,
    DEMO_EPOCHS,
    DEMO_ITERATIONS_PER_EPOCH,
    DemoOptions,
    budget_note,
    describe_outputs,
    run_demo,
)
from nnsam3d.evaluation.evaluate_folder import format_summary_table


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_demo",
        description="Generate a synthetic CT-like dataset (liver, kidney, lesion; anisotropic spacing, mixed "
        f"orientations), plan, preprocess, train fold 0 for a fixed amount of work ({DEMO_EPOCHS} x "
        f"{DEMO_ITERATIONS_PER_EPOCH} iterations: about 10 minutes on 2 quiet CPU cores, longer on a busy "
        "machine, same result), predict the test images and print their Dice per class. Re-running with the "
        "same --workdir resumes.",
    )
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                        help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--iterations-per-epoch", type=int, default=DEMO_ITERATIONS_PER_EPOCH,
                        help=f"training iterations per epoch (default {DEMO_ITERATIONS_PER_EPOCH})")
    parser.add_argument("--minutes", type=float, default=None,
                        help="optional training time budget in minutes: training stops early when it runs out "
                        "(the demo then says the result is short of the full demo's); default: no budget")
    parser.add_argument("--workdir", type=Path, default=Path("nnsam3d_demo"),
                        help="folder for the dataset, preprocessed data, model and predictions (default ./nnsam3d_demo)")
    parser.add_argument("--backbone", default="vit_tiny",
                        help="vit_tiny (default; from scratch, for CPUs) or a SAM backbone such as vit_b (needs its "
                        "checkpoint and, to be quick, a GPU)")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="SAM checkpoint file for a SAM backbone (default: looked up in $nnSAM3D_sam_checkpoints)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU (default)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2,
                        help="processes for preprocessing and evaluation (default 2)")
    parser.add_argument("--format", choices=[ending[1:] for ending in DEMO_DATASETS], default="nii.gz",
                        help="file format of the generated dataset and the predictions (default nii.gz; mha and nrrd "
                        "go through SimpleITK)")
    parser.add_argument("--retrain", action="store_true", help="train fold 0 again even if it finished before")
    return parser


def demo(arguments: argparse.Namespace) -> int:
    for name in ("minutes", "epochs", "iterations_per_epoch"):
        value = getattr(arguments, name)
        if value is not None and value <= 0:
            print(f"nnsam3d_demo: error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    options = DemoOptions(
        workdir=arguments.workdir,
        minutes=arguments.minutes,
        epochs=arguments.epochs,
        backbone=arguments.backbone,
        sam_checkpoint=arguments.sam_checkpoint,
        device=arguments.device,
        num_processes=arguments.num_processes,
        iterations_per_epoch=arguments.iterations_per_epoch,
        retrain=arguments.retrain,
        file_ending=f".{arguments.format}",
    )
    result = run_demo(options)
    print("\nDice on the held-out test images:")
    print(format_summary_table(result.summary))
    if result.cut_short:
        print("\n" + budget_note(result, options))
    print(f"\nDemo finished in {result.seconds / 60:.1f} minutes. Outputs:")
    print(describe_outputs(result, options.workdir))
    print(f"\nReport of the test predictions (open in a browser): {result.report_file.as_uri()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError: e.g. --device cuda without a GPU
    return run_command(build_parser(), demo, argv, user_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
