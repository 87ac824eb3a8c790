"""Preprocess every training case of a raw dataset into the case store, resumably.

Output: ``$nnSAM3D_preprocessed/DatasetXXX_Name/<plans.data_identifier>/`` (see
``case_storage``), plus a copy of ``dataset.json`` in ``DatasetXXX_Name/`` next to the plans, so
that the preprocessed folder alone is enough to train.

Resuming: a case is complete once its properties file exists (written last and atomically), so a
rerun skips complete cases and redoes interrupted ones. The settings that shape the stored data
(target spacing, normalisation, resampling order) are kept in the hidden file
``.preprocessing.json`` in the data folder; when new plans change them, every case is redone.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from nnsam3d import paths
from nnsam3d.io.atomic import atomic_path, read_json, write_json_atomic
from nnsam3d.io.image_io import ImageIO, image_io_for_dataset
from nnsam3d.io.disk_space import DiskFullError, disk_full_message, require_free_space
from nnsam3d.io.raw_dataset import DatasetDescription, RawCase, labelled_training_cases
from nnsam3d.schemas.fingerprint import DatasetFingerprint
from nnsam3d.schemas.plans import Plans
from nnsam3d.preprocessing.case_properties import CASE_PROPERTIES_SCHEMA_VERSION
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.preprocessing.parallel_cases import map_cases
from nnsam3d.preprocessing.preprocessor import preprocess_case_files
from nnsam3d.preprocessing.resampling import compute_new_shape

SETTINGS_FILE = ".preprocessing.json"


@dataclass
class PreprocessingSummary:
    """What :func:`preprocess_dataset` did. ``store`` reads the cases back."""

    store: PreprocessedCaseStore
    preprocessed: list[str]
    skipped: list[str]
    removed: list[str]


def preprocessing_settings(plans: Plans) -> dict:
    """The parts of the plans that determine the stored data, as JSON-ready content."""
    content = {
        "case_properties_schema_version": CASE_PROPERTIES_SCHEMA_VERSION,
        "target_spacing": list(plans.target_spacing),
        "image_resampling_order": plans.image_resampling_order,
        "normalization": [asdict(n) for n in plans.normalization],
    }
    return json.loads(json.dumps(content))  # tuples → lists, as they read back from the file


def _stored_settings(folder: Path) -> dict | None:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError:
        return None  # a broken settings file counts as unknown settings: redo everything


def _preprocess_and_store(case: RawCase, plans: Plans, folder: Path, image_io: ImageIO) -> str:
    """Worker: one case from its raw files into the store (runs in a worker process)."""
    result = preprocess_case_files(
        case.image_files, plans, label_file=case.label_file, case_id=case.case_id, image_io=image_io
    )
    PreprocessedCaseStore(folder).write_case(
        case.case_id, result.data, result.segmentation, result.properties, result.class_locations
    )
    return case.case_id


def estimated_store_bytes(fingerprint: DatasetFingerprint, plans: Plans, case_ids: Sequence[str]) -> int:
    """Bytes the stored cases ``case_ids`` will take: float32 channels and int16 labels on the
    target grid (the foreground locations add well under 1%)."""
    index = {case_id: i for i, case_id in enumerate(fingerprint.case_ids)}
    bytes_per_voxel = 4 * len(plans.normalization) + 2
    total = 0
    for case_id in case_ids:
        if case_id in index:
            i = index[case_id]
            shape = compute_new_shape(fingerprint.shapes_after_cropping[i], fingerprint.spacings[i], plans.target_spacing)
            total += int(np.prod(shape)) * bytes_per_voxel
    return total


def _say(message: str) -> None:
    print(f"nnsam3d: {message}", file=sys.stderr)


def preprocess_dataset(
    dataset: str | int,
    plans: Plans,
    *,
    num_processes: int = 2,
    clean: bool = False,
    cases: Sequence[RawCase] | None = None,
    fingerprint: DatasetFingerprint | None = None,
) -> PreprocessingSummary:
    """Preprocess every training case of ``dataset`` (number or ``DatasetXXX_Name``) with ``plans``.

    Cases already complete with the same preprocessing settings are skipped unless ``clean``;
    cases no longer in the raw dataset are removed from the store. Cases run in
    ``num_processes`` worker processes, one case per worker at a time.
    ``cases``: the labelled training cases when the caller has listed them already
    (``io.raw_dataset.labelled_training_cases``); default: listed here.
    fingerprint: the dataset's fingerprint, when known, to refuse before starting (raising
        ``io.disk_space.DiskFullError``) when the disk cannot hold the cases to preprocess. A disk
        that fills up anyway raises the same error; finished cases are kept for the rerun.
    """
    dataset_name = paths.resolve_dataset_name(dataset)
    raw_dir = paths.raw_dataset_dir(dataset_name)
    description = DatasetDescription.from_file(raw_dir / "dataset.json")
    image_io = image_io_for_dataset(description, source=str(raw_dir / "dataset.json"))
    if cases is None:
        cases = labelled_training_cases(raw_dir, description)

    output_dir = paths.preprocessed_dataset_dir(dataset_name)
    store = PreprocessedCaseStore(output_dir / plans.data_identifier)
    settings = preprocessing_settings(plans)
    stored_settings = None if clean else _stored_settings(store.folder)
    if stored_settings != settings:
        if store.case_ids() and not clean:
            _say(
                f"{store.folder}: the stored cases were made with other preprocessing settings "
                f"(target spacing, normalisation or resampling); preprocessing every case again."
            )
        shutil.rmtree(store.folder, ignore_errors=True)
        write_json_atomic(store.folder / SETTINGS_FILE, settings)

    wanted = {case.case_id for case in cases}
    removed = [case_id for case_id in store.case_ids() if case_id not in wanted]
    for case_id in removed:
        store.remove_case(case_id)
    if removed:
        _say(f"removed {len(removed)} preprocessed case(s) no longer in {raw_dir}: {', '.join(removed)}")

    todo = [case for case in cases if not store.is_complete(case.case_id)]
    skipped = sorted(wanted - {case.case_id for case in todo})
    if skipped:
        _say(f"{len(skipped)} of {len(cases)} cases already preprocessed in {store.folder}; skipping them.")
    if fingerprint is not None and todo:
        needed = estimated_store_bytes(fingerprint, plans, [case.case_id for case in todo])
        require_free_space(store.folder, needed, f"preprocessing {len(todo)} case(s)")
    try:
        done = map_cases(
            partial(_preprocess_and_store, plans=plans, folder=store.folder, image_io=image_io),
            todo,
            num_processes,
            f"Preprocessing {dataset_name}",
        )
    except DiskFullError as error:
        if fingerprint is None:
            raise
        remaining = [case.case_id for case in todo if not store.is_complete(case.case_id)]
        needed = estimated_store_bytes(fingerprint, plans, remaining)
        raise DiskFullError(
            disk_full_message(store.folder, f"preprocessing the {len(remaining)} remaining case(s)", needed)
        ) from error

    _copy_dataset_json(raw_dir / "dataset.json", output_dir / "dataset.json")
    return PreprocessingSummary(store=store, preprocessed=done, skipped=skipped, removed=removed)


def _copy_dataset_json(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
