"""Evaluate a folder of predicted label maps against reference label maps → ``summary.json``.

Every file ``CASE<file_ending>`` of the prediction folder is compared with the reference
folder's file of the same name, class by class (:mod:`metrics`): Dice, IoU, normalised surface
Dice and HD95 in millimetres, the spacing taken from the reference file's affine (voxel sizes
along the canonical axes, so anisotropic and oblique grids are measured correctly). Both files
must lie on the same grid in the world: same canonical shape and affine; their file
orientations may differ.

``summary.json``::

    {"labels": {"liver": 1, ...}, "ignore_label": null, "nsd_tolerance_mm": 2.0, "conventions": "...",
     "mean": {"liver": {"Dice": .., "IoU": .., "NSD": .., "HD95_mm": .., "TP": .., "FP": .., "FN": .., "TN": ..,
                        "n_pred": .., "n_ref": .., "cases": {"Dice": n, ...}}, ...,
              "1": <the same as "liver">, ...},
     "foreground_mean": {"Dice": .., "IoU": .., "NSD": .., "HD95_mm": .., "TP": .., ...},
     "per_case": [{"case_id": .., "reference_file": .., "prediction_file": .., "spacing_mm": [z, y, x],
                   "metrics": {"liver": {"Dice": .., ..., "reference_voxels": .., "prediction_voxels": ..}}}],
     "metric_per_case": [{"reference_file": .., "prediction_file": .., "metrics": {"1": {"Dice": .., ...}}}]}

Undefined values (see the conventions in :mod:`metrics`) are ``null`` and left out of the
means; ``cases`` counts the cases each mean covers. ``foreground_mean`` is the mean over the
classes of their means (every class weighs the same, whatever its size).

nnU-Net's keys are there too, so scripts written for nnU-Net's ``summary.json`` read this one:
``mean`` is also keyed by label value (``"1"``), ``metric_per_case`` holds the per-case metrics
keyed by label value, and every class entry has nnU-Net's voxel counts ``TP``, ``FP``, ``FN``,
``TN``, ``n_pred``, ``n_ref``. Iterate over ``labels`` (name → value) to visit each class once.

An ignore label (dataset.json label "ignore": unannotated voxels) is left out of every metric
as nnU-Net does: the prediction is scored on the voxels the reference annotates only, i.e. a
prediction inside the ignored region is neither a false positive nor a surface.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from nnsam3d.evaluation.metrics import class_metrics
from nnsam3d.io.atomic import write_json_atomic
from nnsam3d.io.image_io import read_segmentation
from nnsam3d.io.raw_dataset import IGNORE_LABEL_NAME

SUMMARY_SCHEMA_VERSION = 1
METRIC_NAMES = ("Dice", "IoU", "NSD", "HD95_mm")
CONVENTIONS = (
    "Both reference and prediction empty: Dice, IoU, NSD and HD95 undefined (null), left out of the means. "
    "Exactly one empty: Dice, IoU, NSD = 0, HD95 undefined (null). HD95 = max of the two directed 95th "
    "percentiles of surface distances (mm); NSD = share of both surfaces within the tolerance of the other."
)
GRID_TOLERANCE_MM = 1e-3


class EvaluationInputError(ValueError):
    """Reference or prediction files that cannot be compared; the message names them."""


NNUNET_COUNTS = ("TP", "FP", "FN", "TN", "n_pred", "n_ref")
"""nnU-Net's per-class voxel counts, carried in every class entry of the summary."""


def foreground_labels(labels: dict[str, int]) -> dict[str, int]:
    """The labels to evaluate: every label but background (0) and the ignore label."""
    return {name: int(value) for name, value in labels.items() if int(value) != 0 and name != IGNORE_LABEL_NAME}


def annotated_region(reference: np.ndarray, labels: dict[str, int]) -> np.ndarray | None:
    """Boolean mask of the voxels the reference annotates (not the ignore label); None when
    ``labels`` has no ignore label (every voxel counts)."""
    ignore = labels.get(IGNORE_LABEL_NAME)
    return None if ignore is None else reference != int(ignore)


def nnunet_counts(reference: np.ndarray, prediction: np.ndarray, voxels: int) -> dict[str, int]:
    """nnU-Net's counts of two boolean masks; ``voxels``: the voxels evaluated (for TN)."""
    tp = int(np.logical_and(reference, prediction).sum())
    n_ref, n_pred = int(reference.sum()), int(prediction.sum())
    return {"TP": tp, "FP": n_pred - tp, "FN": n_ref - tp, "TN": voxels - n_ref - n_pred + tp,
            "n_pred": n_pred, "n_ref": n_ref}


def read_label_pair(reference_file: str | os.PathLike, prediction_file: str | os.PathLike):
    """(reference, prediction, spacing) canonical int16 label maps of two files on the same grid;
    spacing in mm along (z, y, x)."""
    reference, reference_geometry = read_segmentation(reference_file)
    prediction, prediction_geometry = read_segmentation(prediction_file)
    same_grid = reference_geometry.canonical_shape == prediction_geometry.canonical_shape and np.allclose(
        reference_geometry.canonical_affine, prediction_geometry.canonical_affine, atol=GRID_TOLERANCE_MM
    )
    if not same_grid:
        raise EvaluationInputError(
            f"{prediction_file}: not on the grid of the reference {reference_file} (shapes "
            f"{prediction_geometry.shape} {prediction_geometry.axis_codes} vs {reference_geometry.shape} "
            f"{reference_geometry.axis_codes}, or different affines). Predictions must be exported in the "
            f"reference image's geometry."
        )
    return reference, prediction, reference_geometry.spacing


def evaluate_case(
    reference_file: str | os.PathLike,
    prediction_file: str | os.PathLike,
    labels: dict[str, int],
    nsd_tolerance_mm: float = 2.0,
    case_id: str | None = None,
) -> dict:
    """Metrics of every foreground label of one case (the ``per_case`` entry of the summary).

    With an ignore label in ``labels``, only the annotated voxels are scored (see the module).
    """
    reference, prediction, spacing = read_label_pair(reference_file, prediction_file)
    annotated = annotated_region(reference, labels)
    voxels = reference.size if annotated is None else int(annotated.sum())
    metrics = {}
    for name, value in foreground_labels(labels).items():
        actual, predicted = reference == value, prediction == value
        if annotated is not None:
            predicted &= annotated
        metrics[name] = class_metrics(actual, predicted, spacing, nsd_tolerance_mm).to_json()
        metrics[name].update(nnunet_counts(actual, predicted, voxels))
    return {
        "case_id": case_id or Path(prediction_file).name,
        "reference_file": str(reference_file),
        "prediction_file": str(prediction_file),
        "spacing_mm": [float(s) for s in spacing],
        "metrics": metrics,
    }


def _mean_or_none(values: Sequence[float | None]) -> tuple[float | None, int]:
    defined = [v for v in values if v is not None]
    return (float(np.mean(defined)) if defined else None), len(defined)


def summarize_cases(per_case: list[dict], labels: dict[str, int]) -> tuple[dict, dict]:
    """(per-class means, foreground mean) of ``per_case`` entries, undefined values left out."""
    means = {}
    for name in foreground_labels(labels):
        entry, counts = {}, {}
        for metric in (*METRIC_NAMES, *NNUNET_COUNTS):
            # Older per-case entries (written before the counts existed) lack them.
            entry[metric], counts[metric] = _mean_or_none([case["metrics"][name].get(metric) for case in per_case])
        entry["cases"] = {metric: counts[metric] for metric in METRIC_NAMES}
        means[name] = entry
    foreground = {
        metric: _mean_or_none([means[name][metric] for name in means])[0] for metric in (*METRIC_NAMES, *NNUNET_COUNTS)
    }
    return means, foreground


def _keyed_by_value(entries: dict[str, dict], labels: dict[str, int]) -> dict[str, dict]:
    """nnU-Net's keys: the label value as a string ("1") for each class name."""
    return {str(value): entries[name] for name, value in foreground_labels(labels).items()}


def prediction_files(prediction_dir: str | os.PathLike, file_ending: str) -> list[Path]:
    """The label maps of a prediction folder (temporary files of unfinished writes left out)."""
    prediction_dir = Path(prediction_dir)
    if not prediction_dir.is_dir():
        raise EvaluationInputError(f"{prediction_dir}: prediction folder not found.")
    return sorted(
        p for p in prediction_dir.iterdir()
        if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")
    )


def _evaluate_case_arguments(arguments: tuple) -> dict:
    return evaluate_case(*arguments)


def missing_predictions(reference_dir: Path, predictions: list[Path], file_ending: str) -> list[str]:
    """Names of the reference label maps that have no prediction of the same name."""
    predicted = {p.name for p in predictions}
    return [p.name for p in prediction_files(reference_dir, file_ending) if p.name not in predicted]


def evaluate_folders(
    reference_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    labels: dict[str, int],
    file_ending: str,
    output_file: Path | None = None,
    nsd_tolerance_mm: float = 2.0,
    num_processes: int = 1,
    chill: bool = False,
) -> dict:
    """Evaluate every prediction in ``prediction_dir`` against ``reference_dir``; returns the summary.

    labels: label name → value (background is skipped; a label "ignore" marks unannotated
    voxels, which are not scored). file_ending: e.g. ``.nii.gz``.
    output_file: where to write the summary JSON (None: not written).
    num_processes: cases evaluated in parallel processes.
    chill: evaluate the predictions present even if reference cases have none (nnU-Net's
    ``--chill``); otherwise missing predictions raise :class:`EvaluationInputError` naming them.
    A prediction without a reference raises :class:`EvaluationInputError` naming it.
    """
    reference_dir = Path(reference_dir)
    predictions = prediction_files(prediction_dir, file_ending)
    if not predictions:
        raise EvaluationInputError(f"{prediction_dir}: no predictions ending in {file_ending}.")
    if not chill and reference_dir.is_dir():
        missing = missing_predictions(reference_dir, predictions, file_ending)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise EvaluationInputError(
                f"{prediction_dir}: no prediction for {len(missing)} of the {len(missing) + len(predictions)} "
                f"reference case(s) in {reference_dir}: {shown}. Predict them, or pass --chill to evaluate the "
                f"cases that were predicted."
            )
    jobs = []
    for prediction in predictions:
        reference = reference_dir / prediction.name
        if not reference.is_file():
            raise EvaluationInputError(
                f"{prediction}: no reference {reference}. Evaluate against the folder holding the label maps of "
                f"these cases (same file names)."
            )
        case_id = prediction.name[: -len(file_ending)]
        jobs.append((reference, prediction, labels, nsd_tolerance_mm, case_id))
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs))) as pool:
            per_case = list(pool.map(_evaluate_case_arguments, jobs))
    else:
        per_case = [_evaluate_case_arguments(job) for job in jobs]
    means, foreground = summarize_cases(per_case, labels)
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "reference_folder": str(reference_dir),
        "prediction_folder": str(prediction_dir),
        "file_ending": file_ending,
        "labels": foreground_labels(labels),
        "ignore_label": labels.get(IGNORE_LABEL_NAME),
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "conventions": CONVENTIONS,
        "mean": {**means, **_keyed_by_value(means, labels)},
        "foreground_mean": foreground,
        "per_case": per_case,
        "metric_per_case": [
            {"reference_file": case["reference_file"], "prediction_file": case["prediction_file"],
             "metrics": _keyed_by_value(case["metrics"], labels)}
            for case in per_case
        ],
    }
    if output_file is not None:
        write_json_atomic(output_file, summary)
    return summary


def format_summary_table(summary: dict) -> str:
    """The per-class means as a text table (undefined values shown as '-')."""
    def cell(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [f"{'class':<20} {'Dice':>8} {'IoU':>8} {'NSD':>8} {'HD95 mm':>9} {'cases':>6}"]
    for name in summary["labels"]:
        entry = summary["mean"][name]
        rows.append(f"{name:<20} {cell(entry['Dice']):>8} {cell(entry['IoU']):>8} {cell(entry['NSD']):>8} "
                    f"{cell(entry['HD95_mm'], 2):>9} {entry['cases']['Dice']:>6}")
    mean = summary["foreground_mean"]
    rows.append(f"{'foreground mean':<20} {cell(mean['Dice']):>8} {cell(mean['IoU']):>8} {cell(mean['NSD']):>8} "
                f"{cell(mean['HD95_mm'], 2):>9}")
    return "\n".join(rows)
