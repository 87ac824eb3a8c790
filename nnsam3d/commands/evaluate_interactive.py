"""``nnsam3d_evaluate_interactive -d DATASET -i IMAGES -ref LABELS [--clicks 10]``: Dice after 0, 1, 2, 3,
5, 10 simulated clicks per class and case, the mean curve as a table and a PNG, seconds per click."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, DEFAULT_FOLDS_DESCRIPTION
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.model_selection.interactive_evaluation import (
    InteractiveEvaluationError,
    evaluate_interactive,
    format_curve_table,
    write_summary,
)
from nnsam3d.paths import resolve_dataset_name, training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import INTERACTIVE_TRAINER

def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_evaluate_interactive",
        description="Evaluate an interactive model with a simulated user: per case and class, clicks at the centre "
        "of the largest error region; Dice after each click, the mean curve and seconds per click.",
    )
    parser.add_argument("-d", dest="dataset", required=True, help="dataset number or name")
    parser.add_argument("-i", dest="images", required=True, help="folder of cases CASE_XXXX<file ending>")
    parser.add_argument("-ref", dest="references", required=True, help="folder of reference label maps CASE<file ending>")
    parser.add_argument("-o", dest="output", default=None,
                        help="where interactive_summary.json and interactive_curve.png go (default: IMAGES/../interactive_evaluation)")
    parser.add_argument("--clicks", type=int, default=10, help="clicks per class and case (default 10)")
    parser.add_argument("-tr", dest="trainer", default=INTERACTIVE_TRAINER, help=f"default {INTERACTIVE_TRAINER}")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME)
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help=f"folds to ensemble (default: {DEFAULT_FOLDS_DESCRIPTION})")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINT_FILES), default="final")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (8x faster clicks)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def evaluate(arguments: argparse.Namespace) -> int:
    if arguments.clicks < 1:
        print("nnsam3d_evaluate_interactive: error: --clicks must be at least 1", file=sys.stderr)
        return 1
    dataset_name = resolve_dataset_name(arguments.dataset)
    predictor = Predictor.from_model_folder(
        training_output_dir(dataset_name, arguments.trainer, arguments.plans), folds=arguments.folds,
        checkpoint_name=CHECKPOINT_FILES[arguments.checkpoint], device=arguments.device,
        use_mirroring=not arguments.disable_tta,
    )
    summary = evaluate_interactive(predictor, arguments.images, arguments.references, arguments.clicks,
                                   message=lambda text: print(text, file=sys.stderr))
    output = Path(arguments.output) if arguments.output else Path(arguments.images).resolve().parent / "interactive_evaluation"
    json_path, png_path = write_summary(summary, output)
    print(format_curve_table(summary))
    print(f"nnsam3d_evaluate_interactive: {json_path}, {png_path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError: bad option values (device) found while setting up
    return run_command(build_parser(), evaluate, argv, user_errors=(ClickError, InteractiveEvaluationError, ValueError))

if __name__ == "__main__":
    sys.exit(main())
