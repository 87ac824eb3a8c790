"""``nnsam3d_plan_and_preprocess -d ID``: verify, fingerprint, plan and preprocess a dataset."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.nnunet_habits import drop_configuration
from nnsam3d.io.geometry import ImageReadError
from nnsam3d.io.raw_dataset import DatasetFormatError
from nnsam3d.model.backbones import BACKBONES
from nnsam3d.paths import DatasetNotFoundError
from nnsam3d.planners.integrity import DatasetIntegrityError
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

USER_ERRORS = (DatasetNotFoundError, DatasetFormatError, DatasetIntegrityError, ImageReadError)
"""Problems with the user's dataset: reported as a message, without a traceback."""


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnsam3d_plan_and_preprocess",
        description=(
            "Fingerprint a raw dataset (nnU-Net v2 format in $nnSAM3D_raw), plan the 3DMedSAM "
            "configuration for a GPU memory target and preprocess the training cases into "
            "$nnSAM3D_preprocessed/DatasetXXX_Name/."
        ),
    )
    parser.add_argument("-d", "--dataset", dest="datasets", nargs="+", required=True,
                        help="dataset number (501) or name (Dataset501_Liver); several are processed one after another")
    parser.add_argument(
        "--verify_dataset_integrity",
        action="store_true",
        help="check the raw dataset first and stop, writing nothing, if anything is wrong",
    )
    parser.add_argument(
        "--gpu-memory-gb",
        "-gpu_memory_target",
        type=_positive(float),
        default=None,
        metavar="G",
        help="GPU memory (GiB) to plan for; default: the visible GPU, else a CPU plan",
    )
    parser.add_argument(
        "--compute-budget",
        type=_positive(float),
        default=None,
        metavar="HOURS",
        help="hours to train one fold of the default schedule on one H100-class GPU (estimated from the "
        "FLOPs per step); the plan stays within it (default 24)",
    )
    parser.add_argument(
        "--backbone", choices=sorted(BACKBONES), default=None, help="force a backbone (vit_tiny for CPU runs)"
    )
    parser.add_argument(
        "-np", "--num-processes", type=_positive(int), default=2, metavar="N", help="worker processes (default 2)"
    )
    parser.add_argument(
        "--clean", action="store_true", help="recompute the fingerprint and preprocess every case again"
    )
    parser.add_argument(
        "-p", "--plans-name", "-overwrite_plans_name", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(drop_configuration(argv, parser.prog))
    failed = []
    for dataset in args.datasets:
        try:
            plan_and_preprocess(
                dataset,
                verify=args.verify_dataset_integrity,
                gpu_memory_gb=args.gpu_memory_gb,
                compute_budget_hours=args.compute_budget,
                backbone=args.backbone,
                num_processes=args.num_processes,
                clean=args.clean,
                plans_name=args.plans_name,
            )
        except USER_ERRORS as error:
            message = str(error)
            if isinstance(error, DatasetIntegrityError):
                message += "\nNothing was written: no fingerprint, plans or preprocessed data."
            sys.stderr.write(f"{parser.prog}: error: {message}\n")
            failed.append(dataset)
    if failed:
        several = len(args.datasets) > 1
        parser.exit(1, f"{parser.prog}: {len(failed)} of {len(args.datasets)} datasets failed: {', '.join(failed)}\n"
                    if several else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
