"""Extract the dataset fingerprint (``dataset_fingerprint.json``) from the raw training cases.

Every case is checked while it is read (``integrity.read_checked_case``: unreadable files, grids
that disagree, NaN/inf voxels, undeclared label values): a dataset with any such problem is
refused with every problem listed, before anything is written, with or without
``--verify_dataset_integrity``.

Per case, after the same crop the preprocessor does (``preprocessing.cropped_case``):
spacing, shapes before and after cropping to non-zero, a bounded random sample of each
channel's intensities inside the labelled foreground (as nnU-Net: CT normalisation should
reflect the structures to segment, not air or the table), and the voxel count of each class.
Cases run in worker processes that return only these small summaries, so memory stays at a
few cases whatever the dataset size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from nnsam3d.io.raw_dataset import DatasetDescription, DatasetFormatError, RawCase, labelled_training_cases
from nnsam3d.planners.integrity import DatasetIntegrityError, IntegrityProblem, read_checked_case
from nnsam3d.schemas.fingerprint import ClassStatistics, DatasetFingerprint, IntensityStatistics
from nnsam3d.preprocessing.cropped_case import crop_case
from nnsam3d.preprocessing.parallel_cases import map_cases
from nnsam3d.preprocessing.preprocessor import case_seed

FOREGROUND_SAMPLES_PER_CASE = 50_000
"""Foreground voxels sampled per case and channel for the intensity statistics. With 20 cases
that is a million values, plenty for 0.5/99.5 percentiles, at 200 kB per case and channel."""


@dataclass
class CaseFingerprint:
    """What one case contributes to the fingerprint.

    spacing: mm (z, y, x). shape_before_cropping, shape_after_cropping: voxels (z, y, x).
    foreground_samples: (C, N) float32 intensities at N random foreground voxels (the same
        voxels in every channel).
    foreground_min, foreground_max: (C,) exact extremes over all foreground voxels.
    class_voxel_counts: label value → voxels of that class in the case.
    """

    case_id: str
    spacing: tuple[float, float, float]
    shape_before_cropping: tuple[int, int, int]
    shape_after_cropping: tuple[int, int, int]
    foreground_samples: np.ndarray
    foreground_min: np.ndarray
    foreground_max: np.ndarray
    class_voxel_counts: dict[int, int]


def case_fingerprint(
    case: RawCase, description: DatasetDescription, samples_per_case: int
) -> CaseFingerprint | list[IntegrityProblem]:
    """Read, check, crop and summarise one case (runs in a worker process); the case's problems
    instead when it has any."""
    checked = read_checked_case(case, description)
    if checked.problems:
        return checked.problems
    cropped = crop_case(checked.images, checked.geometry, segmentation=checked.segmentation, case_id=case.case_id)
    del checked
    # Foreground intensities come from annotated foreground only: voxels of the ignore label
    # (unannotated) may be anything and are left out.
    ignore_label = description.ignore_label
    segmentation = cropped.segmentation
    num_channels = cropped.images.shape[0]

    in_foreground = segmentation > 0
    if ignore_label is not None:
        in_foreground &= segmentation != ignore_label
    foreground = np.flatnonzero(in_foreground)
    if len(foreground) > samples_per_case:
        rng = np.random.default_rng(case_seed(case.case_id))
        foreground = np.sort(rng.choice(foreground, size=samples_per_case, replace=False))
    # The cropped image is a view of the full one: index it by coordinates, which reads only the
    # chosen voxels, where flattening it would copy the whole cropped volume.
    sampled = np.unravel_index(foreground, in_foreground.shape)
    samples = np.empty((num_channels, len(foreground)), dtype=np.float32)
    minima = np.full(num_channels, np.nan, dtype=np.float64)
    maxima = np.full(num_channels, np.nan, dtype=np.float64)
    for channel in range(num_channels):
        samples[channel] = cropped.images[channel][sampled]
        if len(foreground):
            values = cropped.images[channel][in_foreground]
            minima[channel], maxima[channel] = float(values.min()), float(values.max())

    counts = _label_voxel_counts(segmentation)
    return CaseFingerprint(
        case_id=case.case_id,
        spacing=cropped.spacing,
        shape_before_cropping=cropped.shape_before_cropping,
        shape_after_cropping=cropped.shape_after_cropping,
        foreground_samples=samples,
        foreground_min=minima,
        foreground_max=maxima,
        class_voxel_counts={label: int(counts.get(label, 0)) for label in description.foreground_labels},
    )


def _label_voxel_counts(segmentation: np.ndarray) -> dict[int, int]:
    values = segmentation.reshape(-1)
    if values.size and values.min() >= 0:
        return {label: int(n) for label, n in enumerate(np.bincount(values)) if n}
    unique, counts = np.unique(values, return_counts=True)
    return {int(label): int(n) for label, n in zip(unique, counts)}


def intensity_statistics(samples: np.ndarray, minimum: float, maximum: float) -> IntensityStatistics:
    """Statistics of one channel from its foreground sample (1D) and exact foreground extremes."""
    samples = samples.astype(np.float64, copy=False)
    median, low, high = np.percentile(samples, [50.0, 0.5, 99.5])
    return IntensityStatistics(
        mean=float(samples.mean()),
        std=float(samples.std()),
        median=float(median),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
        min=float(minimum),
        max=float(maximum),
    )


def combine_case_fingerprints(
    cases: list[CaseFingerprint], description: DatasetDescription, dataset_name: str
) -> DatasetFingerprint:
    """The dataset fingerprint from the per-case summaries (in case order)."""
    intensity = {}
    for channel in range(description.num_channels):
        samples = np.concatenate([case.foreground_samples[channel] for case in cases])
        if samples.size == 0:
            raise DatasetFormatError(
                f"{dataset_name}: no training label map contains a foreground voxel, so there are no "
                f"foreground intensities to plan the normalisation with. Check labelsTr."
            )
        minimum = float(np.nanmin([case.foreground_min[channel] for case in cases]))
        maximum = float(np.nanmax([case.foreground_max[channel] for case in cases]))
        intensity[str(channel)] = intensity_statistics(samples, minimum, maximum)

    class_statistics = {}
    for label in description.foreground_labels:
        counts = [case.class_voxel_counts[label] for case in cases]
        volumes = [n * float(np.prod(case.spacing)) for n, case in zip(counts, cases)]
        class_statistics[str(label)] = ClassStatistics(
            label=label,
            name=description.label_name(label),
            voxel_counts=counts,
            volumes_mm3=volumes,
            cases_present=sum(1 for n in counts if n > 0),
        )

    return DatasetFingerprint(
        dataset_name=dataset_name,
        case_ids=[case.case_id for case in cases],
        spacings=[case.spacing for case in cases],
        shapes_before_cropping=[case.shape_before_cropping for case in cases],
        shapes_after_cropping=[case.shape_after_cropping for case in cases],
        modalities=dict(description.channel_names),
        intensity_statistics=intensity,
        class_statistics=class_statistics,
    )


def extract_fingerprint(
    dataset_dir: str | os.PathLike,
    description: DatasetDescription,
    dataset_name: str,
    num_processes: int = 2,
    samples_per_case: int = FOREGROUND_SAMPLES_PER_CASE,
    *,
    cases: Sequence[RawCase] | None = None,
) -> DatasetFingerprint:
    """Fingerprint of the training cases in ``dataset_dir`` (``imagesTr``/``labelsTr``).

    ``cases``: the labelled training cases when the caller has listed them already
    (``labelled_training_cases``); default: listed here.
    Raises ``DatasetFormatError`` naming the files when a case lacks a channel or its label,
    and ``DatasetIntegrityError`` listing every unreadable file, NaN/inf, undeclared label value
    and disagreeing grid of any case.
    """
    if cases is None:
        cases = labelled_training_cases(Path(dataset_dir), description)
    summaries = map_cases(
        partial(case_fingerprint, description=description, samples_per_case=samples_per_case),
        cases,
        num_processes,
        f"Fingerprint of {dataset_name}",
    )
    problems = [problem for summary in summaries if isinstance(summary, list) for problem in summary]
    if problems:
        raise DatasetIntegrityError(dataset_dir, problems)
    return combine_case_fingerprints(summaries, description, dataset_name)
