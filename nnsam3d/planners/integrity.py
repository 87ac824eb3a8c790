"""``--verify_dataset_integrity``: find every problem of a raw dataset in one pass.

Everything nnU-Net v2 checks (required keys, case count, channel and label files present,
declared label values only, channel/label shapes and spacings agree, NaN) and more: infinite
values, non-integer labels, voxel grids (affine, orientation) of a case's files that disagree
beyond a tolerance, label maps without foreground, unreadable or truncated files, channel files
that do not match ``channel_names``, misnamed files, and CT intensities far outside the
Hounsfield range.

Every problem names its file and what is wrong. Files are read once, one case per worker
process at a time.

The checks that protect training (unreadable files, disagreeing grids, NaN/inf, undeclared or
non-integer labels) run on every ``nnsam3d_plan_and_preprocess``, flag or not: the fingerprint
reads each case through :func:`read_checked_case`. The flag adds the layout checks above and
the extras (empty label maps, implausible CT intensities).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from nnsam3d.io.atomic import read_json
from nnsam3d.io.geometry import ImageGeometry, ImageReadError
from nnsam3d.io.image_io import (
    SUPPORTED_FILE_ENDINGS,
    ImageIO,
    UnsupportedFormatError,
    image_io_for_dataset,
    read_volume,
    read_volume_in_file_order,
)
from nnsam3d.io.raw_dataset import (
    DatasetDescription,
    RawCase,
    find_cases_in_folder,
    label_path,
    unreadable_entry_reason,
    with_labels,
)
from nnsam3d.planners.normalization_rules import normalization_scheme_for
from nnsam3d.preprocessing.parallel_cases import map_cases

SPACING_RELATIVE_TOLERANCE = 1e-3
"""Voxel sizes of a case's files may differ by this fraction (as nnU-Net's relaxed check)."""

GRID_TOLERANCE_VOXELS = 0.1
"""Corresponding voxels of a case's files may lie this far apart in the world (in voxels of the
finest spacing): far below anything visible, far above float32 rounding of affines."""

HOUNSFIELD_PLAUSIBLE_RANGE = (-3100.0, 32767.0)
"""Values a CT scanner writes: air is -1000 HU; padding outside the field of view goes down to
-3024; extended-scale reconstructions of metal reach about +30,000 (int16 holds up to 32767)."""

HOUNSFIELD_MINIMUM_SPAN = 100.0
"""A CT image in Hounsfield units spans hundreds of HU (air, fat, soft tissue, bone, even noise);
a smaller span means the image was normalised or rescaled before."""


@dataclass(frozen=True)
class IntegrityProblem:
    """One problem: the file (or folder) concerned and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DatasetIntegrityError(ValueError):
    """The raw dataset failed ``--verify_dataset_integrity``; ``problems`` lists every problem."""

    def __init__(self, dataset_dir: str | os.PathLike, problems: list[IntegrityProblem]):
        self.dataset_dir = Path(dataset_dir)
        self.problems = list(problems)
        super().__init__(format_integrity_report(self.dataset_dir, self.problems))


def format_integrity_report(dataset_dir: str | os.PathLike, problems: list[IntegrityProblem]) -> str:
    """One line per problem, under a heading naming the dataset."""
    if not problems:
        return f"{dataset_dir}: dataset integrity check passed."
    lines = [f"{dataset_dir}: dataset integrity check found {len(problems)} problem(s):"]
    lines += [f"  {problem}" for problem in problems]
    lines.append("Fix these files (or dataset.json) and run again.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# dataset.json and the folder layout (no image is read)


def _description_problems(dataset_dir: Path) -> tuple[DatasetDescription | None, list[IntegrityProblem]]:
    path = dataset_dir / "dataset.json"
    if not dataset_dir.is_dir():
        return None, [IntegrityProblem(dataset_dir, "dataset folder not found.")]
    if not path.is_file():
        return None, [IntegrityProblem(path, "not found; every dataset needs a dataset.json (nnU-Net v2 format).")]
    try:
        # read_json and from_json both raise ValueError (DatasetFormatError is one) naming the file
        description = DatasetDescription.from_json(read_json(path), source=str(path))
    except ValueError as error:
        return None, [IntegrityProblem(path, str(error).removeprefix(f"{path}: "))]
    try:
        image_io_for_dataset(description, source=str(path))
    except UnsupportedFormatError as error:
        return None, [IntegrityProblem(path, str(error).removeprefix(f"{path}: "))]
    return description, []


def _unaccounted_files(folder: Path, file_ending: str, accounted: set[str], unmatched: str) -> list[IntegrityProblem]:
    """Image files in ``folder`` that belong to no case: ``unmatched`` says why for those with
    the dataset's file ending; others have another supported image ending than ``file_ending``."""
    problems = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or entry.name in accounted:
            continue
        if entry.name.endswith(file_ending):
            problems.append(IntegrityProblem(entry, unmatched))
        elif entry.name.endswith(SUPPORTED_FILE_ENDINGS):
            problems.append(
                IntegrityProblem(entry, f"ending differs from file_ending '{file_ending}' in dataset.json; ignored.")
            )
    return problems


def _layout_problems(
    dataset_dir: Path, description: DatasetDescription
) -> tuple[list[RawCase], list[IntegrityProblem]]:
    """Folders, file naming, channel and label files present, case count. Returns the cases to read."""
    ending = description.file_ending
    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    problems = []
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            problems.append(IntegrityProblem(folder, "folder not found; training cases need imagesTr and labelsTr."))
    if not images_dir.is_dir():
        return [], problems

    complete, incomplete = find_cases_in_folder(images_dir, ending, description.num_channels)
    for case_id, message in incomplete.items():
        problems.append(IntegrityProblem(images_dir / case_id, message.removeprefix(f"{images_dir / case_id}: ")))
    channel_files = {f.name for case in complete for f in case.image_files}
    for case_id in incomplete:
        channel_files |= {f.name for f in images_dir.glob(f"{case_id}_[0-9][0-9][0-9][0-9]{ending}")}
    problems += _unaccounted_files(
        images_dir, ending, channel_files, f"not named CASE_XXXX{ending} (XXXX = channel index); ignored. Rename it."
    )

    case_ids = sorted({case.case_id for case in complete} | set(incomplete))
    if not case_ids:
        problems.append(
            IntegrityProblem(images_dir, f"no training images named CASE_XXXX{ending} (file_ending from dataset.json).")
        )
    if len(case_ids) != description.num_training:
        problems.append(
            IntegrityProblem(
                dataset_dir / "dataset.json",
                f"numTraining is {description.num_training} but {images_dir} holds {len(case_ids)} case(s).",
            )
        )

    if labels_dir.is_dir():
        label_names = {f"{case_id}{ending}" for case_id in case_ids}
        for case_id in case_ids:
            label = label_path(dataset_dir, case_id, ending)
            if not label.is_file():
                reason = (f"is a {unreadable_entry_reason(label)}" if label.is_symlink()
                          else f"label file missing for training case '{case_id}'.")
                problems.append(IntegrityProblem(label, reason))
        problems += _unaccounted_files(labels_dir, ending, label_names, f"label file without images in {images_dir}.")
    cases = with_labels(dataset_dir, complete, ending)

    test_dir = dataset_dir / "imagesTs"
    if test_dir.is_dir():
        _, incomplete_test = find_cases_in_folder(test_dir, ending, description.num_channels)
        for case_id, message in incomplete_test.items():
            problems.append(IntegrityProblem(test_dir / case_id, message.removeprefix(f"{test_dir / case_id}: ")))
    return cases, problems


# ---------------------------------------------------------------------------------------------
# one case's files (runs in worker processes)


def _read(path: Path, image_io: ImageIO, canonical: bool) -> tuple[np.ndarray, ImageGeometry] | IntegrityProblem:
    """Voxels as float32 and the geometry, or the reason the file cannot be read.

    canonical: (z, y, x) as the pipeline holds volumes, for callers that keep the data; else the
    file's order (i, j, k), which spares the reorienting copy: every check here is per voxel or
    per file, so the order does not matter to them.
    """
    try:
        return read_volume(path, image_io) if canonical else read_volume_in_file_order(path, image_io)
    except ImageReadError as error:
        return IntegrityProblem(path, str(error).removeprefix(f"{path}: "))


def _non_finite_problem(path: Path, data: np.ndarray, all_finite: bool) -> IntegrityProblem | None:
    if all_finite:
        return None
    nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    return IntegrityProblem(
        path,
        f"{nan} NaN and {inf} infinite voxel value(s). Replace them with a meaningful value "
        f"(e.g. the background intensity).",
    )


def _hounsfield_problem(path: Path, finite: np.ndarray) -> IntegrityProblem | None:
    """``finite``: the file's finite voxel values."""
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    plausible_low, plausible_high = HOUNSFIELD_PLAUSIBLE_RANGE
    if low < plausible_low or high > plausible_high:
        return IntegrityProblem(
            path,
            f"CT intensities from {low:g} to {high:g} lie far outside the Hounsfield range "
            f"({plausible_low:g} to {plausible_high:g} for any scanner, padding included). Check the "
            f"rescale slope/intercept and the padding value of the conversion, or, if this channel is "
            f"not CT, rename it in dataset.json channel_names.",
        )
    if high - low < HOUNSFIELD_MINIMUM_SPAN:
        return IntegrityProblem(
            path,
            f"CT intensities span only {low:g} to {high:g}: this looks normalised or rescaled, not "
            f"Hounsfield units. Give nnsam3d the original HU (it normalises CT itself), or name the "
            f"channel 'noNorm' or 'rescale_to_0_1' in dataset.json channel_names.",
        )
    return None


def _label_value_problems(
    path: Path, finite: np.ndarray, description: DatasetDescription, require_foreground: bool = True
) -> list[IntegrityProblem]:
    """``finite``: the label file's finite voxel values. require_foreground: a map holding only
    background is a problem."""
    rounded = np.rint(finite)
    problems = []
    if not np.array_equal(rounded, finite):
        problems.append(IntegrityProblem(path, "label map holds non-integer values; labels must be integers."))
    values = rounded.astype(np.int64)
    if values.size and values.min() >= 0 and values.max() < 65536:
        present = np.flatnonzero(np.bincount(values.reshape(-1)))
    else:
        present = np.unique(values)
    declared = set(description.labels.values())
    unexpected = [int(v) for v in present if int(v) not in declared]
    if unexpected:
        problems.append(
            IntegrityProblem(
                path,
                f"label value(s) {unexpected} not declared in dataset.json labels "
                f"(declared: {sorted(declared)}).",
            )
        )
    if require_foreground and description.ignore_label is not None and [int(v) for v in present] == [description.ignore_label]:
        problems.append(
            IntegrityProblem(
                path,
                f"every voxel carries the ignore label ({description.ignore_label}): nothing is annotated. "
                f"Annotate some voxels, or remove the case from imagesTr/labelsTr.",
            )
        )
    elif require_foreground and not any(int(v) > 0 for v in present):
        problems.append(
            IntegrityProblem(
                path,
                "label map holds only background (0), no foreground. Label the structures, or remove "
                "the case from imagesTr/labelsTr.",
            )
        )
    return problems


def _grid_problem(
    path: Path, geometry: ImageGeometry, reference_path: Path, reference: ImageGeometry
) -> IntegrityProblem | None:
    """Shape, spacing and affine of ``geometry`` against the case's first channel, in canonical terms.

    Comparing canonical grids (not raw affines) accepts a file stored in another orientation
    that covers the same voxels, which the pipeline handles exactly, and catches everything that
    would put voxels in different places.
    """
    name = reference_path.name
    if geometry.canonical_shape != reference.canonical_shape:
        return IntegrityProblem(
            path,
            f"shape {geometry.shape} ({geometry.axis_codes}) differs from {name}: {reference.shape} "
            f"({reference.axis_codes}); a case's channels and label must share one voxel grid.",
        )
    if not np.allclose(geometry.spacing, reference.spacing, rtol=SPACING_RELATIVE_TOLERANCE, atol=0):
        return IntegrityProblem(
            path,
            f"spacing {_mm(geometry.spacing)} mm (z, y, x) differs from {name}: {_mm(reference.spacing)} mm.",
        )
    corners = np.array(
        [[z, y, x, 1.0] for z in (0, 1) for y in (0, 1) for x in (0, 1)]
    ) * np.array([*(n - 1 for n in reference.canonical_shape), 1.0])
    world = corners @ geometry.canonical_affine.T
    world_reference = corners @ reference.canonical_affine.T
    distance_mm = float(np.linalg.norm(world[:, :3] - world_reference[:, :3], axis=1).max())
    distance_voxels = distance_mm / min(reference.spacing)
    if distance_voxels <= GRID_TOLERANCE_VOXELS:
        return None
    orientation = ""
    if geometry.axis_codes != reference.axis_codes:
        orientation = f"; orientation {geometry.axis_codes} vs {reference.axis_codes}"
    return IntegrityProblem(
        path,
        f"affine disagrees with {name}: the voxel grids are up to {distance_mm:.2f} mm "
        f"({distance_voxels:.1f} voxels) apart (tolerance {GRID_TOLERANCE_VOXELS} voxel){orientation}. "
        f"Resample or fix the header so that the files overlap.",
    )


def _mm(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


@dataclass
class CheckedCase:
    """One case read by :func:`read_checked_case`.

    images: (C, z, y, x) float32, canonical order; None when the data was not kept or a file failed.
    segmentation: (z, y, x) int16 label map, or None.
    geometry: the grid of the first channel file.
    problems: what is wrong with the case's files (empty: the case may be used).
    """

    images: np.ndarray | None
    segmentation: np.ndarray | None
    geometry: ImageGeometry | None
    problems: list[IntegrityProblem]


def read_checked_case(
    case: RawCase, description: DatasetDescription, *, extras: bool = False, keep_data: bool = True
) -> CheckedCase:
    """Read one case's channel files and label file, each once, and check what protects training.

    Always (the fingerprint extraction reads every case through here): unreadable or truncated
    files and invalid headers, channel and label grids that disagree (shape, spacing, affine,
    orientation), NaN/inf voxels, non-integer or undeclared label values.
    extras (``--verify_dataset_integrity``): label maps without foreground, and CT intensities
    outside the Hounsfield range; neither harms training, but both usually mean a conversion
    went wrong.
    keep_data: return the voxels (canonical order) for the caller to use; else only the problems.
    """
    problems: list[IntegrityProblem | None] = []
    reference: tuple[Path, ImageGeometry] | None = None
    channels: list[np.ndarray] = []
    segmentation = None
    # (file, modality); the label has no modality
    files = [(path, description.modality(index)) for index, path in enumerate(case.image_files)]
    if case.label_file is not None:
        files.append((case.label_file, None))
    image_io = image_io_for_dataset(description)
    for path, modality in files:
        read = _read(path, image_io, canonical=keep_data)
        if isinstance(read, IntegrityProblem):
            problems.append(read)
            continue
        data, geometry = read
        if reference is None:
            reference = (path, geometry)
        else:
            problems.append(_grid_problem(path, geometry, *reference))
        # One isfinite pass per file serves every check below.
        is_finite = np.isfinite(data)
        all_finite = bool(is_finite.all())
        finite = data if all_finite else data[is_finite]
        del is_finite
        problems.append(_non_finite_problem(path, data, all_finite))
        if modality is None:
            problems += _label_value_problems(path, finite, description, require_foreground=extras)
            if keep_data:
                segmentation = np.rint(data).astype(np.int16)
        else:
            if extras and normalization_scheme_for(modality) == "CTNormalization":
                problems.append(_hounsfield_problem(path, finite))
            if keep_data:
                channels.append(data)
        del data, finite
    problems = [problem for problem in problems if problem is not None]
    if problems or not keep_data:
        return CheckedCase(None, None, None, problems)
    return CheckedCase(np.stack(channels), segmentation, reference[1], [])


def check_case(case: RawCase, description: DatasetDescription) -> list[IntegrityProblem]:
    """Every problem of one case's channel files and label file (extras included), each file read once."""
    return read_checked_case(case, description, extras=True, keep_data=False).problems


# ---------------------------------------------------------------------------------------------


def _verify(
    dataset_dir: Path, num_processes: int
) -> tuple[DatasetDescription | None, list[RawCase], list[IntegrityProblem]]:
    description, problems = _description_problems(dataset_dir)
    if description is None:
        return None, [], problems
    cases, problems = _layout_problems(dataset_dir, description)
    per_case = map_cases(
        partial(check_case, description=description), cases, num_processes, f"Verifying {dataset_dir.name}"
    )
    for case_problems in per_case:
        problems += case_problems
    return description, cases, problems


def verify_dataset_integrity(dataset_dir: str | os.PathLike, num_processes: int = 2) -> list[IntegrityProblem]:
    """Every problem of the raw dataset in ``dataset_dir`` (empty list: the dataset is fine).

    dataset.json problems that make the files uninterpretable (missing, broken, missing keys)
    stop the check there; otherwise every case is read, ``num_processes`` at a time.
    """
    _description, _cases, problems = _verify(Path(dataset_dir), num_processes)
    return problems


def check_dataset_integrity(
    dataset_dir: str | os.PathLike, num_processes: int = 2
) -> tuple[DatasetDescription, list[RawCase]]:
    """Verify the dataset; raise :class:`DatasetIntegrityError` listing every problem, if any.

    Returns the parsed ``dataset.json`` and the training cases (every one with all its channels
    and its label), so that the caller need not read and list them again.
    """
    description, cases, problems = _verify(Path(dataset_dir), num_processes)
    if problems:
        raise DatasetIntegrityError(dataset_dir, problems)
    print(format_integrity_report(dataset_dir, problems))
    return description, cases
