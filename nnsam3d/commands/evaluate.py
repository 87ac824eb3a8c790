"""``nnsam3d_evaluate -ref REF -pred PRED``: Dice, IoU, NSD and HD95 per case and class → summary.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsam3d import paths
from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.evaluation.evaluate_folder import EvaluationInputError, evaluate_folders, format_summary_table
from nnsam3d.io.raw_dataset import IGNORE_LABEL_NAME, DatasetDescription


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_evaluate",
        description="Compare predicted label maps with reference label maps of the same names. Distances are in mm "
        "(spacing from the files' affines). Both masks empty: metrics undefined (null) and left out of means; "
        "one empty: Dice/IoU/NSD 0, HD95 undefined.",
    )
    parser.add_argument("-ref", dest="reference", required=True, help="folder of reference label maps")
    parser.add_argument("-pred", dest="prediction", required=True, help="folder of predicted label maps")
    parser.add_argument("-d", dest="dataset", default=None,
                        help="dataset (number or name) whose dataset.json gives labels and file ending; default: a "
                        "dataset.json next to the reference folder")
    parser.add_argument("-l", dest="labels", nargs="+", type=int, default=None,
                        help="label values to evaluate (overrides the dataset's labels)")
    parser.add_argument("-o", dest="output", default=None, help="summary file (default PRED/summary.json)")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=2.0,
                        help="tolerance of the normalised surface Dice in mm (default 2)")
    parser.add_argument("--file-ending", default=None, help="file ending (default: the dataset's, else .nii.gz)")
    parser.add_argument("-np", dest="num_processes", type=int, default=1, help="cases evaluated in parallel")
    parser.add_argument("--chill", action="store_true",
                        help="evaluate the predictions there are even if reference cases have none (nnU-Net's "
                        "--chill); by default a missing prediction is an error that names it")
    return parser


def _description(arguments: argparse.Namespace) -> DatasetDescription | None:
    if arguments.dataset is not None:
        return DatasetDescription.from_file(paths.raw_dataset_dir(arguments.dataset) / "dataset.json")
    beside = Path(arguments.reference).resolve().parent / "dataset.json"
    return DatasetDescription.from_file(beside) if beside.is_file() else None


def evaluate(arguments: argparse.Namespace) -> int:
    description = _description(arguments)
    if arguments.labels is not None:
        names = {v: k for k, v in description.labels.items()} if description else {}
        labels = {names.get(v, str(v)): v for v in arguments.labels}
        if description is not None and description.ignore_label is not None:  # still not scored
            labels[IGNORE_LABEL_NAME] = description.ignore_label
    elif description is not None:
        labels = description.labels
    else:
        raise EvaluationInputError(
            f"{arguments.reference}: no dataset.json next to it; say which labels to evaluate with -d DATASET or -l 1 2 ..."
        )
    ending = arguments.file_ending or (description.file_ending if description else ".nii.gz")
    output = Path(arguments.output) if arguments.output else Path(arguments.prediction) / "summary.json"
    summary = evaluate_folders(
        arguments.reference, arguments.prediction, labels, ending, output_file=output,
        nsd_tolerance_mm=arguments.nsd_tolerance_mm, num_processes=arguments.num_processes,
        chill=arguments.chill,
    )
    print(format_summary_table(summary))
    print(f"summary: {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
