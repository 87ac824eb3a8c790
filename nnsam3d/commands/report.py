"""``nnsam3d_report``: a static HTML page to review a predicted cohort, or a model's training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.reporting.cohort_report import (
    CohortInputs,
    ReportInputError,
    dataset_labels,
    write_cohort_report,
    write_page,
)
from nnsam3d.reporting.training_report import training_page


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_report",
        description="Write OUT/index.html, a self-contained page (opens from disk, offline). With -i/-p: one row per "
        "predicted case with pictures in three planes through each class's largest structure, volumes (mL), "
        "pieces, Dice/NSD against -ref, and flags for suspicious cases; sortable, click a row for a larger view. "
        "With RESULTS (a model folder TRAINER__PLANS or a dataset's results folder): the training curves of "
        "every fold and the cross-validation table.",
    )
    parser.add_argument("results", nargs="?", type=Path, default=None,
                        help="results folder to report on (instead of -i/-p)")
    parser.add_argument("-i", dest="images", type=Path, help="folder of the images (CASE_0000<file ending>, ...)")
    parser.add_argument("-p", dest="predictions", type=Path, help="folder of the predicted label maps (CASE<file ending>)")
    parser.add_argument("-ref", dest="references", type=Path, default=None,
                        help="folder of reference label maps (CASE<file ending>): adds Dice and NSD")
    parser.add_argument("-d", dest="dataset", default=None,
                        help="dataset number or name: labels from its dataset.json, training volume ranges from its "
                        "fingerprint (default: dataset.json beside the images folder, else the predicted values)")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="report folder (index.html is written there)")
    parser.add_argument("--file-ending", default=None, help="image file ending (default: the dataset's, else .nii.gz)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="cases reviewed in parallel (default 2)")
    return parser


def report(arguments: argparse.Namespace) -> int:
    if (arguments.results is None) == (arguments.images is None or arguments.predictions is None):
        print("nnsam3d_report: error: give either RESULTS (a results folder) or both -i IMAGES and -p PREDICTIONS",
              file=sys.stderr)
        return 2
    if arguments.results is not None:
        page = write_page(training_page(arguments.results), arguments.output)
    else:
        labels, file_ending, sizes, source = dataset_labels(
            arguments.dataset, arguments.images, arguments.predictions, arguments.file_ending)
        print(f"nnsam3d_report: labels from {source}"
              + ("" if sizes else "; no training fingerprint, so no volume-range flags (give -d)"), file=sys.stderr)
        inputs = CohortInputs(arguments.images, arguments.predictions, arguments.references, labels, file_ending,
                              sizes)
        page = write_cohort_report(inputs, arguments.output, arguments.num_processes)
    print(f"nnsam3d_report: open {page.resolve().as_uri()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError: malformed inputs found while reading them
    return run_command(build_parser(), report, argv, user_errors=(ReportInputError, ValueError))

if __name__ == "__main__":
    sys.exit(main())
