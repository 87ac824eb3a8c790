"""The one place that reads the folder environment variables.

nnsam3d keeps nnU-Net's three-folder convention:

* ``nnSAM3D_raw``: raw datasets in nnU-Net v2 format (``DatasetXXX_Name/``). When unset,
  ``nnUNet_raw`` is used so that existing nnU-Net datasets work unchanged.
* ``nnSAM3D_preprocessed``: fingerprints, plans and preprocessed cases.
* ``nnSAM3D_results``: trained models (``DatasetXXX_Name/TRAINER__PLANS/fold_K``).

When a variable is unset, a folder under ``~/nnsam3d_data`` is used and a notice is printed
once per process, so that a first-time user sees where files go.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

RAW_VARIABLE = "nnSAM3D_raw"
RAW_FALLBACK_VARIABLE = "nnUNet_raw"
PREPROCESSED_VARIABLE = "nnSAM3D_preprocessed"
NNUNET_PREPROCESSED_VARIABLE = "nnUNet_preprocessed"
RESULTS_VARIABLE = "nnSAM3D_results"

DEFAULT_ROOT = Path.home() / "nnsam3d_data"

_notices_given: set[str] = set()


class DatasetNotFoundError(LookupError):
    """No folder matches the dataset number or name the user gave."""


def _folder_from_environment(variables: tuple[str, ...], default_name: str) -> Path:
    for variable in variables:
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    folder = DEFAULT_ROOT / default_name
    if variables[0] not in _notices_given:
        _notices_given.add(variables[0])
        print(
            f"nnsam3d: {variables[0]} is not set; using {folder}. "
            f"Set {variables[0]} to choose another folder.",
            file=sys.stderr,
        )
    return folder


def raw_root() -> Path:
    """Folder holding raw datasets (``nnSAM3D_raw``, else ``nnUNet_raw``, else the default)."""
    return _folder_from_environment((RAW_VARIABLE, RAW_FALLBACK_VARIABLE), "raw")


def preprocessed_root() -> Path:
    """Folder holding fingerprints, plans and preprocessed data."""
    return _folder_from_environment((PREPROCESSED_VARIABLE,), "preprocessed")


def results_root() -> Path:
    """Folder holding trained models."""
    return _folder_from_environment((RESULTS_VARIABLE,), "results")


_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset501_Liver`` from ``(501, "Liver")``."""
    return f"Dataset{dataset_id:03d}_{name}"


def resolve_dataset_name(identifier: str | int) -> str:
    """Turn a dataset number (``501``, ``"501"``) or full name into ``DatasetXXX_Name``.

    The raw, preprocessed and results folders are searched in that order, so that a dataset
    can be named on a machine that holds only its preprocessed data or only its trained models.
    """
    text = str(identifier).strip()
    if _DATASET_FOLDER.match(text):
        return text
    if not text.isdigit():
        raise DatasetNotFoundError(
            f"'{identifier}' is neither a dataset number (e.g. 501) nor a full dataset name "
            f"(e.g. Dataset501_Liver)."
        )
    number = int(text)
    searched = []
    for root in (raw_root(), preprocessed_root(), results_root()):
        searched.append(str(root))
        if not root.is_dir():
            continue
        matches = sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir()
            and (match := _DATASET_FOLDER.match(entry.name))
            and int(match.group(1)) == number
        )
        if len(matches) > 1:
            raise DatasetNotFoundError(
                f"Dataset number {number} is ambiguous in {root}: {', '.join(matches)}. "
                f"Name the dataset in full."
            )
        if matches:
            return matches[0]
    raise DatasetNotFoundError(
        f"No folder Dataset{number:03d}_* found in {', '.join(searched)}. "
        f"Put the raw dataset into {raw_root()} (nnU-Net v2 format) or set {RAW_VARIABLE}."
    )


def raw_dataset_dir(identifier: str | int) -> Path:
    return raw_root() / resolve_dataset_name(identifier)


def preprocessed_dataset_dir(identifier: str | int) -> Path:
    return preprocessed_root() / resolve_dataset_name(identifier)


def results_dataset_dir(identifier: str | int) -> Path:
    return results_root() / resolve_dataset_name(identifier)


def training_output_dir(identifier: str | int, trainer_name: str, plans_name: str) -> Path:
    """``$nnSAM3D_results/DatasetXXX_Name/TRAINER__PLANS`` (folds live below it)."""
    return results_dataset_dir(identifier) / f"{trainer_name}__{plans_name}"


def nnunet_splits_file(dataset_name: str) -> Path | None:
    """nnU-Net's ``$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` when it exists.

    Read so that a dataset already cross-validated with nnU-Net keeps exactly its folds.
    """
    value = os.environ.get(NNUNET_PREPROCESSED_VARIABLE)
    if not value:
        return None
    path = Path(value).expanduser() / dataset_name / "splits_final.json"
    return path if path.is_file() else None


def fold_dir(identifier: str | int, trainer_name: str, plans_name: str, fold: int | str) -> Path:
    return training_output_dir(identifier, trainer_name, plans_name) / f"fold_{fold}"


SAM_CHECKPOINT_DIR_VARIABLE = "nnSAM3D_sam_checkpoints"


def sam_checkpoint_dir() -> Path:
    """Folder searched for official SAM checkpoints and used as the download cache.

    ``nnSAM3D_sam_checkpoints`` when set, else ``~/.cache/nnsam3d/sam_checkpoints``.
    """
    value = os.environ.get(SAM_CHECKPOINT_DIR_VARIABLE)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "nnsam3d" / "sam_checkpoints"
