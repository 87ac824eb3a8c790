"""``nnsam3d_install_model model.zip``: put an exported model into $nnSAM3D_results."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.model_sharing.install import install_model
from nnsam3d.model_sharing.model_zip import read_model_card
from nnsam3d.paths import RESULTS_VARIABLE, results_root


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_install_model",
        description=f"Install a model exported by nnsam3d_export_model into ${RESULTS_VARIABLE} "
        "(DatasetXXX_Name/TRAINER__PLANS), where nnsam3d_predict -d finds it. The model appears complete or not "
        "at all; an installed model of the same dataset, trainer and plans is kept unless --force.",
    )
    parser.add_argument("model", help="the model zip")
    parser.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    return parser


def install(arguments: argparse.Namespace) -> int:
    card = read_model_card(arguments.model)
    folder = install_model(arguments.model, results_root(), force=arguments.force)
    print(f"nnsam3d_install_model: installed {folder}")
    print(f"predict with: nnsam3d_predict -i IN -o OUT -d {card['dataset']} -tr {card['trainer']} -p {card['plans']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), install, argv)


if __name__ == "__main__":
    sys.exit(main())
