"""``nnsam3d_convert_msd -i TaskXX_Name``: a Medical Segmentation Decathlon task → nnU-Net v2 dataset."""

from __future__ import annotations

import argparse
import sys

from nnsam3d import paths
from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.io.msd_dataset import MsdFormatError, convert_msd_task, task_id_and_name


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_convert_msd",
        description="Convert a Medical Segmentation Decathlon task (4D images, channels in the 4th dimension) into "
        "an nnU-Net v2 dataset $nnSAM3D_raw/DatasetXXX_Name (one file per channel), as nnUNetv2_convert_MSD_dataset.",
    )
    parser.add_argument("-i", dest="input", required=True, help="the MSD task folder, e.g. Task01_BrainTumour")
    parser.add_argument("-overwrite_id", "--overwrite-id", dest="dataset_id", type=int, default=None,
                        help="dataset number to use instead of the task's (e.g. 501)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="processes (default 2)")
    return parser


def convert(arguments: argparse.Namespace) -> int:
    task_id, name = task_id_and_name(arguments.input)
    dataset_id = task_id if arguments.dataset_id is None else arguments.dataset_id
    target = paths.raw_root() / paths.dataset_folder_name(dataset_id, name)
    convert_msd_task(arguments.input, target, num_processes=arguments.num_processes)
    print(f"nnsam3d_convert_msd: wrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), convert, argv, user_errors=(MsdFormatError,))


if __name__ == "__main__":
    sys.exit(main())
