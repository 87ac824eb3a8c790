"""``nnsam3d_plan_and_preprocess -d ID``: verify, fingerprint, plan and preprocess a dataset."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import USER_ERRORS, command_parser, describe_error, run_command
from nnsam3d.model.backbones import BACKBONES
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
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
        help="also check what does not harm training but usually means a broken conversion (empty label maps, "
        "CT intensities outside the Hounsfield range, stray files, numTraining); the checks that protect "
        "training (NaN/inf, undeclared labels, disagreeing grids, unreadable files) always run",
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
        "FLOPs per step); the plan stays within it (default 24; for a CPU plan 0.1, about a 10 s step on 2 cores)",
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


def plan_and_preprocess_command(args: argparse.Namespace) -> int:
    """Each dataset in turn; with several, one that fails is reported and the others still run."""
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
            if len(args.datasets) == 1:
                raise
            print(f"nnsam3d_plan_and_preprocess: error: {describe_error(error, USER_ERRORS)}", file=sys.stderr)
            failed.append(dataset)
    if failed:
        print(f"nnsam3d_plan_and_preprocess: {len(failed)} of {len(args.datasets)} datasets failed: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), plan_and_preprocess_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
