"""``nnsam3d_find_best_configuration DATASET``: pick the best trainer (or ensemble) and its postprocessing."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.model_selection.find_best_configuration import find_best_configuration
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import DEFAULT_TRAINER


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_find_best_configuration",
        description="Evaluate the cross-validation predictions of trained trainers (and their ensembles, where "
        "validation probabilities were saved with nnsam3d_train --npz), choose the best by mean foreground Dice, "
        "decide per class whether keeping the largest connected component helps, write postprocessing.json and "
        "print the nnsam3d_predict command to use.",
    )
    parser.add_argument("dataset", help="dataset number (e.g. 501) or name (Dataset501_Liver)")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=[DEFAULT_TRAINER],
                        help=f"trainers to compare (default {DEFAULT_TRAINER})")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds whose validation to use (default: those with fold_K/validation in the first trainer)")
    parser.add_argument("--disable-ensembling", "--disable_ensembling", action="store_true", help="compare single trainers only")
    parser.add_argument("-np", dest="num_processes", type=int, default=1, help="cases evaluated in parallel")
    return parser


def find_best(arguments: argparse.Namespace) -> int:
    find_best_configuration(
        arguments.dataset, arguments.trainers, arguments.plans, folds=arguments.folds,
        allow_ensembles=not arguments.disable_ensembling, num_processes=arguments.num_processes,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), find_best, argv)


if __name__ == "__main__":
    sys.exit(main())
