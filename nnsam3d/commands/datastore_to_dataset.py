"""``nnsam3d_datastore_to_dataset --datastore DIR -d 502 -n Corrected``: the labels saved on the
annotation server (nnsam3d_serve) → a raw nnU-Net dataset in $nnSAM3D_raw, checked for integrity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.paths import dataset_folder_name, raw_root
from nnsam3d.planners.integrity import check_dataset_integrity
from nnsam3d.serving.datastore_to_dataset import DatastoreConversionError, datastore_to_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_datastore_to_dataset",
        description="Turn the labels saved on nnsam3d_serve (tag final: the corrected ones) into a raw nnU-Net "
        "dataset (imagesTr, labelsTr, dataset.json), ready for nnsam3d_plan_and_preprocess.",
    )
    parser.add_argument("--datastore", required=True, help="the folder nnsam3d_serve --datastore wrote")
    parser.add_argument("-d", dest="dataset_id", type=int, help="new dataset number (written to $nnSAM3D_raw/DatasetXXX_NAME)")
    parser.add_argument("-n", dest="name", default="Corrected", help="new dataset name (default Corrected)")
    parser.add_argument("-o", dest="output", default=None, help="or: the dataset folder to write, anywhere")
    parser.add_argument("--tag", default="final", help="label tag to take (default final)")
    return parser


def convert(arguments: argparse.Namespace) -> int:
    if arguments.output is None and arguments.dataset_id is None:
        raise DatastoreConversionError("give -d NUMBER (and -n NAME) or -o FOLDER")
    target = Path(arguments.output) if arguments.output else raw_root() / dataset_folder_name(arguments.dataset_id,
                                                                                              arguments.name)
    if (target / "dataset.json").exists():
        raise DatastoreConversionError(f"{target} already holds a dataset; choose another number or folder")
    cases = datastore_to_dataset(arguments.datastore, target, tag=arguments.tag)
    check_dataset_integrity(target, num_processes=1)
    print(f"nnsam3d_datastore_to_dataset: {len(cases)} case(s) written to {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), convert, argv, user_errors=(DatastoreConversionError,))


if __name__ == "__main__":
    sys.exit(main())
