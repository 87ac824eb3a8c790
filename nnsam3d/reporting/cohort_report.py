"""The cohort QC page: ``nnsam3d_report -i IMAGES -p PREDICTIONS [-ref LABELS] [-d DATASET] -o report/``.

One row per predicted case: small pictures (contours over the first channel, in three planes
through each predicted class's largest structure, drawn by :mod:`nnsam3d.inference.overlays`),
per-class volumes (mL) and pieces, Dice and NSD against the references when given
(:func:`nnsam3d.evaluation.evaluate_folder.evaluate_case`), and flags (:mod:`case_review`).
The page is ``OUT/index.html``, self-contained (:mod:`html_page`). Pictures are JPEG
(about 15 kB per class and case), so a cohort of a thousand 3-class cases makes a page of
about 50 MB.
"""

from __future__ import annotations

import base64
import html
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnsam3d import paths
from nnsam3d.evaluation.evaluate_folder import evaluate_case, foreground_labels, prediction_files
from nnsam3d.inference.overlays import label_colour, largest_structure_centre, overlay_figure
from nnsam3d.io.atomic import atomic_path
from nnsam3d.io.image_io import read_segmentation, read_volume
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.reporting.case_review import ClassReview, TrainingSizes, flags_for, review_classes
from nnsam3d.reporting.html_page import Cell, Column, Page, Row, render_page
from nnsam3d.schemas.fingerprint import FINGERPRINT_FILENAME, DatasetFingerprint

REPORT_FILENAME = "index.html"
PICTURE_SIZE_INCHES, PICTURE_DPI = (9.0, 3.4), 80
JPEG_QUALITY = 80


class ReportInputError(ValueError):
    """Folders that cannot be reported on; the message names them."""


@dataclass
class CaseEntry:
    """One row: reviews per class name, flags, pictures (class name → data URI), or an error."""

    case_id: str
    reviews: dict[str, ClassReview] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    pictures: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class CohortInputs:
    """images: folder of CASE_0000<ending> (first channel shown). predictions: CASE<ending>.
    references: label maps CASE<ending> or None. labels: name → value (background included or not).
    sizes: the training labels' per-class sizes, or None without a fingerprint."""

    images: Path
    predictions: Path
    references: Path | None
    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    sizes: TrainingSizes | None = None


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="jpeg", bbox_inches="tight", pad_inches=0.05, pil_kwargs={"quality": JPEG_QUALITY})
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def review_case(inputs: CohortInputs, case_id: str) -> CaseEntry:
    """Measure, flag and draw one case; a file problem becomes the row's error, not an exception."""
    entry = CaseEntry(case_id)
    labels = foreground_labels(inputs.labels)
    prediction_file = inputs.predictions / f"{case_id}{inputs.file_ending}"
    image_file = inputs.images / f"{case_id}_0000{inputs.file_ending}"
    try:
        label_map, geometry = read_segmentation(prediction_file)
        entry.reviews = review_classes(label_map, geometry.spacing, labels)
        entry.flags = flags_for(entry.reviews, labels, inputs.sizes)
        if inputs.references is not None:
            reference_file = inputs.references / f"{case_id}{inputs.file_ending}"
            if not reference_file.is_file():
                raise FileNotFoundError(f"{reference_file}: no reference label map for this case.")
            metrics = evaluate_case(reference_file, prediction_file, labels)["metrics"]
            for name, review in entry.reviews.items():
                review.dice, review.nsd = metrics[name]["Dice"], metrics[name]["NSD"]
        if not image_file.is_file():
            raise FileNotFoundError(f"{image_file}: image not found (pictures need the case's first channel).")
        image, image_geometry = read_volume(image_file)
        if image.shape != label_map.shape:
            raise ValueError(f"{prediction_file}: shape {label_map.shape} differs from its image {image_file} "
                             f"{image.shape}.")
        names = {value: name for name, value in labels.items()}
        drawn = [name for name, review in entry.reviews.items() if review.volume_ml > 0] or [None]
        for name in drawn:
            centre = largest_structure_centre(label_map, labels[name] if name else None)
            figure = overlay_figure(image, label_map, geometry.spacing, names,
                                    title=f"{case_id}: {name or 'nothing predicted'}", centre=centre,
                                    size_inches=PICTURE_SIZE_INCHES, dpi=PICTURE_DPI)
            entry.pictures[name or "image"] = _data_uri(figure)
    except (OSError, ValueError) as error:  # ImageReadError is a ValueError; both name their file
        entry.error = str(error)
    return entry


def _review_case_job(job: tuple[CohortInputs, str]) -> CaseEntry:
    return review_case(*job)


def review_cohort(inputs: CohortInputs, num_processes: int = 1) -> list[CaseEntry]:
    """Every prediction of the folder reviewed (in parallel processes when ``num_processes`` > 1)."""
    files = prediction_files(inputs.predictions, inputs.file_ending)
    if not files:
        raise ReportInputError(f"{inputs.predictions}: no predictions ending in {inputs.file_ending}.")
    jobs = [(inputs, f.name[: -len(inputs.file_ending)]) for f in files]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs))) as pool:
            return list(pool.map(_review_case_job, jobs))
    return [_review_case_job(job) for job in jobs]


def _number(value: float | None, digits: int) -> Cell:
    return Cell("" if value is None else f"{value:.{digits}f}", value)


def cohort_page(entries: list[CaseEntry], inputs: CohortInputs, title: str) -> Page:
    """The table: case, flags, pictures, then per class volume/pieces (and Dice/NSD), mean Dice."""
    labels = foreground_labels(inputs.labels)
    with_metrics = inputs.references is not None
    columns = [Column("case", "case", numeric=False), Column("flags", "flags")]
    columns.append(Column("pictures", "pictures"))
    for name in labels:
        columns += [Column(f"{name}_ml", f"{name} mL"), Column(f"{name}_pieces", f"{name} pieces")]
        if with_metrics:
            columns += [Column(f"{name}_dice", f"{name} Dice"), Column(f"{name}_nsd", f"{name} NSD")]
    if with_metrics:
        columns.append(Column("mean_dice", "mean Dice"))
    rows = []
    for entry in entries:
        flags = entry.flags + ([f"error: {entry.error}"] if entry.error else [])
        pictures = "".join(f'<img alt="{name}" title="{name}" src="{uri}">' for name, uri in entry.pictures.items())
        cells = [Cell(entry.case_id, entry.case_id), Cell("; ".join(flags), len(flags), css="flags"),
                 Cell(value=len(entry.pictures), markup=pictures, css="pictures")]
        for name in labels:
            review = entry.reviews.get(name)
            cells += [_number(review and review.volume_ml, 2), _number(review and review.pieces, 0)]
            if with_metrics:
                cells += [_number(review and review.dice, 3), _number(review and review.nsd, 3)]
        if with_metrics:
            dices = [r.dice for r in entry.reviews.values() if r.dice is not None]
            cells.append(_number(float(np.mean(dices)) if dices else None, 3))
        detail = "".join(f"<p>{flag}</p>" for flag in map(html.escape, flags))
        rows.append(Row(entry.case_id, cells, detail, css="flagged" if flags else ""))
    flagged = sum(1 for row in rows if row.css)
    legend = ", ".join(f"{name} ({label_colour(value)})" for name, value in labels.items())
    summary = (f"{len(entries)} case(s), {flagged} flagged. Predictions {inputs.predictions}; images {inputs.images}"
               + (f"; references {inputs.references}" if with_metrics else "")
               + f". Contours: {legend}. Click a column to sort, a row for a larger view.")
    footer = ("Flags: a class missing; a volume below half the smallest or above twice the largest of the training "
              "labels (from dataset_fingerprint.json, when the dataset is known); a class in pieces with at least "
              "5% of its volume outside the largest. Volumes from the prediction's voxel size.")
    return Page(title, summary, columns, rows, footer=footer)


def write_page(page: Page, output_dir: str | os.PathLike) -> Path:
    """``output_dir/index.html``, written atomically; returns its path."""
    target = Path(output_dir) / REPORT_FILENAME
    with atomic_path(target) as temporary:
        temporary.write_text(render_page(page), encoding="utf-8")
    return target


def write_cohort_report(inputs: CohortInputs, output_dir: str | os.PathLike, num_processes: int = 1,
                        title: str = "nnsam3d cohort review") -> Path:
    """Review every case and write the page; returns ``output_dir/index.html``."""
    for folder, what in ((inputs.images, "images"), (inputs.predictions, "predictions"),
                         (inputs.references, "references")):
        if folder is not None and not Path(folder).is_dir():
            raise ReportInputError(f"{folder}: {what} folder not found.")
    entries = review_cohort(inputs, num_processes)
    return write_page(cohort_page(entries, inputs, title), output_dir)


def dataset_labels(
    dataset: str | None, images: Path, predictions: Path, file_ending: str | None
) -> tuple[dict[str, int], str, TrainingSizes | None, str]:
    """(labels, file ending, training sizes or None, where they came from) for a report.

    dataset: its ``dataset.json`` (raw folder) and ``dataset_fingerprint.json`` (preprocessed
    folder, for the volume flags). Without it: a ``dataset.json`` beside the images folder (a raw
    dataset's ``imagesTs``), else the label values found in the predictions, named by value.
    """
    description_file = Path(paths.raw_dataset_dir(dataset)) / "dataset.json" if dataset else images.parent / "dataset.json"
    if description_file.is_file():
        description = DatasetDescription.from_file(description_file)
        sizes, source = None, str(description_file)
        if dataset:
            fingerprint_file = paths.preprocessed_dataset_dir(dataset) / FINGERPRINT_FILENAME
            if fingerprint_file.is_file():
                sizes = TrainingSizes.from_fingerprint(DatasetFingerprint.load(fingerprint_file))
                source += f" and {fingerprint_file}"
        return dict(description.labels), file_ending or description.file_ending, sizes, source
    if dataset:
        raise ReportInputError(f"{description_file}: dataset.json not found for dataset {dataset}.")
    file_ending = file_ending or ".nii.gz"
    values = set()
    for file in prediction_files(predictions, file_ending):
        values.update(int(v) for v in np.unique(read_segmentation(file)[0]) if v > 0)
    return {f"label {v}": v for v in sorted(values)}, file_ending, None, "the label values in the predictions"
