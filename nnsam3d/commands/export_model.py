"""``nnsam3d_export_model -d DATASET -o model.zip``: one trained model as a zip to hand on."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.commands.nnunet_habits import checkpoint_choice
from nnsam3d.inference.model_folders import CHECKPOINT_FILES
from nnsam3d.model_sharing.export import export_model
from nnsam3d.paths import training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import DEFAULT_TRAINER


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_export_model",
        description="Write a trained model (its fold checkpoints, plans, dataset.json, postprocessing.json and a "
        "model card with the cross-validation Dice and the SAM checkpoint it belongs to) into one zip file. "
        "Install it elsewhere with nnsam3d_install_model, or predict with it directly: nnsam3d_predict -m ZIP.",
    )
    parser.add_argument("-d", dest="dataset", required=True, help="dataset number (e.g. 501) or name")
    parser.add_argument("-tr", dest="trainer", default=DEFAULT_TRAINER, help=f"trainer (default {DEFAULT_TRAINER})")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to export (default: every fold with a checkpoint)")
    parser.add_argument("-chk", "--checkpoint", dest="checkpoints", nargs="+", type=checkpoint_choice,
                        choices=tuple(CHECKPOINT_FILES), default=list(CHECKPOINT_FILES),
                        help="checkpoints to include, those present (default: final and best)")
    parser.add_argument("-o", dest="output", required=True, help="zip file to write")
    return parser


def export(arguments: argparse.Namespace) -> int:
    model_dir = training_output_dir(arguments.dataset, arguments.trainer, arguments.plans)
    card = export_model(model_dir, arguments.output, arguments.folds,
                        [CHECKPOINT_FILES[name] for name in arguments.checkpoints])
    dice = card["cross_validation"].get("foreground_mean_dice")
    print(f"nnsam3d_export_model: {card['dataset']} {card['trainer']}__{card['plans']}, folds {', '.join(card['folds'])}"
          f"{'' if dice is None else f', cross-validation Dice {dice:.4f}'} -> {arguments.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), export, argv)


if __name__ == "__main__":
    sys.exit(main())
