"""Plan and preprocess a dataset: what ``nnsam3d_plan_and_preprocess`` does, as one function.

::

    raw DatasetXXX_Name/ ─ (verify) ─ fingerprint ─► dataset_fingerprint.json
                                         └─ planner ─► <plans_name>.json (nnsam3d_plans.json)
                                                └─ preprocessing ─► <plans_name>_3d/ (cases)

All outputs go to ``$nnSAM3D_preprocessed/DatasetXXX_Name/``. Each stage hands over through
its file, so a rerun reuses the fingerprint and skips finished cases unless ``clean``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnsam3d import paths
from nnsam3d.io.image_io import image_io_for_dataset
from nnsam3d.io.raw_dataset import DatasetDescription, RawCase, labelled_training_cases
from nnsam3d.planners.experiment_planner import plan_experiment
from nnsam3d.schemas.fingerprint import FINGERPRINT_FILENAME, DatasetFingerprint
from nnsam3d.planners.fingerprint_extraction import extract_fingerprint
from nnsam3d.planners.integrity import check_dataset_integrity
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.preprocessing.dataset_preprocessing import preprocess_dataset

FINGERPRINT_FILE = FINGERPRINT_FILENAME


def fingerprint_path(dataset: str | int) -> Path:
    """``$nnSAM3D_preprocessed/DatasetXXX_Name/dataset_fingerprint.json``."""
    return paths.preprocessed_dataset_dir(dataset) / FINGERPRINT_FILE


def plans_path(dataset: str | int, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """``$nnSAM3D_preprocessed/DatasetXXX_Name/<plans_name>.json``."""
    return paths.preprocessed_dataset_dir(dataset) / f"{plans_name}.json"


def _newest_change(cases: Sequence[RawCase]) -> float:
    """Latest modification time (s) of the cases' files."""
    files = [path for case in cases for path in (*case.image_files, case.label_file) if path is not None]
    return max((path.stat().st_mtime for path in files), default=0.0)


def _reusable_fingerprint(path: Path, cases: Sequence[RawCase]) -> DatasetFingerprint | None:
    """The stored fingerprint if it is readable, covers exactly the current cases, and no case
    file changed since it was made (its extraction checked every file; a replaced file must be
    checked again)."""
    if not path.is_file():
        return None
    case_ids = [case.case_id for case in cases]
    if _newest_change(cases) > path.stat().st_mtime:
        print(f"nnsam3d: training files changed since {path} was made; extracting it again.", file=sys.stderr)
        return None
    try:
        fingerprint = DatasetFingerprint.load(path)
    except ValueError as error:
        print(f"nnsam3d: {path} cannot be reused ({error}); extracting it again.", file=sys.stderr)
        return None
    if fingerprint.case_ids != case_ids:
        print(f"nnsam3d: the training cases changed since {path} was made; extracting it again.", file=sys.stderr)
        return None
    return fingerprint


def dataset_fingerprint(
    dataset: str | int,
    *,
    num_processes: int = 2,
    clean: bool = False,
    description: DatasetDescription | None = None,
    cases: Sequence[RawCase] | None = None,
) -> DatasetFingerprint:
    """The dataset's fingerprint: the stored one when still valid (and not ``clean``), else a new
    one, which is then stored.

    ``description``, ``cases``: the raw dataset's ``dataset.json`` and labelled training cases
    when the caller has them already; default: read here.
    """
    dataset_name = paths.resolve_dataset_name(dataset)
    raw_dir = paths.raw_dataset_dir(dataset_name)
    if description is None:
        description = DatasetDescription.from_file(raw_dir / "dataset.json")
    if cases is None:
        cases = labelled_training_cases(raw_dir, description)
    path = fingerprint_path(dataset_name)
    if not clean:
        fingerprint = _reusable_fingerprint(path, cases)
        if fingerprint is not None:
            return fingerprint
    fingerprint = extract_fingerprint(raw_dir, description, dataset_name, num_processes, cases=cases)
    fingerprint.save(path)
    return fingerprint


def plan_and_preprocess(
    dataset: str | int,
    *,
    verify: bool = False,
    gpu_memory_gb: float | None = None,
    compute_budget_hours: float | None = None,
    backbone: str | None = None,
    num_processes: int = 2,
    clean: bool = False,
    plans_name: str = DEFAULT_PLANS_NAME,
) -> Plans:
    """Fingerprint, plan and preprocess ``dataset`` (number or ``DatasetXXX_Name``); return the plans.

    verify: run the full integrity check first (``--verify_dataset_integrity``: also empty label
        maps, implausible CT intensities, stray files, numTraining). Without it, the checks that
        protect training still run while the fingerprint reads every case. Either way a problem
        raises ``planners.integrity.DatasetIntegrityError`` listing them all, having written nothing.
    gpu_memory_gb: memory target (GiB) of the plan; default: the visible GPU, else a CPU plan.
    compute_budget_hours: hours per fold of the default schedule on the reference GPU
        (``model.compute_budget``); default: about a day.
    backbone: force a backbone (e.g. ``vit_tiny``); default: the planner chooses.
    num_processes: worker processes for verification, fingerprint and preprocessing.
    clean: recompute the fingerprint and preprocess every case again.
    plans_name: name of the plans file (``<plans_name>.json``) and of the data folder
        (``<plans_name>_3d``).

    Raises ``paths.DatasetNotFoundError``, ``io.raw_dataset.DatasetFormatError`` or
    ``io.geometry.ImageReadError`` (each naming the file) for problems with the raw dataset.
    """
    dataset_name = paths.resolve_dataset_name(dataset)
    raw_dir = paths.raw_dataset_dir(dataset_name)
    if not raw_dir.is_dir():
        raise paths.DatasetNotFoundError(
            f"{raw_dir}: raw dataset not found (only preprocessed or trained files exist for "
            f"{dataset_name}). Put the raw dataset there or set {paths.RAW_VARIABLE}."
        )
    # Read once and handed down, so that fingerprint and preprocessing work on the same case list.
    if verify:
        description, cases = check_dataset_integrity(raw_dir, num_processes)
    else:
        description = DatasetDescription.from_file(raw_dir / "dataset.json")
        image_io_for_dataset(description, source=str(raw_dir / "dataset.json"))  # an unreadable format stops here
        cases = labelled_training_cases(raw_dir, description)

    fingerprint = dataset_fingerprint(
        dataset_name, num_processes=num_processes, clean=clean, description=description, cases=cases
    )
    plans = plan_experiment(
        fingerprint,
        description,
        gpu_memory_gb=gpu_memory_gb,
        compute_budget_hours=compute_budget_hours,
        backbone=backbone,
        sam_checkpoint_dirs=[paths.sam_checkpoint_dir()],
        plans_name=plans_name,
    )
    plans.save(plans_path(dataset_name, plans_name))
    print(plans.explanation, flush=True)

    preprocess_dataset(dataset_name, plans, num_processes=num_processes, clean=clean, cases=cases,
                       fingerprint=fingerprint)
    return plans
