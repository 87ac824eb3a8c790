"""Where trained models lie and which checkpoints a prediction uses.

::

    $nnSAM3D_results/DatasetXXX_Name/
        TRAINER__PLANS/                 one model folder per trainer and plans
            fold_0/checkpoint_final.pth  (checkpoint_best.pth, validation/ ...)
            fold_1/ ...
            postprocessing.json         written by nnsam3d_find_best_configuration
        ensembles/ensemble__T1__T2__PLANS/postprocessing.json   for an ensemble of trainers
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from nnsam3d import paths

CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
ENSEMBLES_FOLDER = "ensembles"
_FOLD_FOLDER = re.compile(r"^fold_(\d+|all)$")
DEFAULT_FOLDS_DESCRIPTION = "the cross-validation folds fold_0, fold_1, ..., or fold_all when it is the only one"
"""What a command's ``-f`` takes when it is not given (:func:`default_folds`), for its help text."""


class ModelFolderError(FileNotFoundError):
    """A model folder or fold checkpoint that is not there; the message says what to do."""


def _fold_sort_key(fold: str) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def available_folds(model_dir: str | os.PathLike, checkpoint_name: str | None = None) -> list[str]:
    """Folds (``"0"``, ``"1"``, ..., ``"all"``) with a ``fold_K`` folder in ``model_dir`` (holding
    ``checkpoint_name`` when given), sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    folds = [
        match.group(1)
        for entry in model_dir.iterdir()
        if entry.is_dir() and (match := _FOLD_FOLDER.match(entry.name))
        and (checkpoint_name is None or (entry / checkpoint_name).is_file())
    ]
    return sorted(folds, key=_fold_sort_key)


def default_folds(model_dir: str | os.PathLike, checkpoint_name: str | None = None) -> list[str]:
    """The folds a prediction uses when none are named: the cross-validation folds with
    ``checkpoint_name``, as nnU-Net's auto-detection (which leaves ``fold_all`` out, since it saw
    every case the others held out); ``["all"]`` when fold ``all`` is the only model, as on a
    dataset too small for cross-validation (where nnU-Net would find no fold)."""
    present = available_folds(model_dir, checkpoint_name)
    cross_validation = [fold for fold in present if fold != "all"]
    return cross_validation or present


def fold_checkpoints(
    model_dir: str | os.PathLike, folds: Sequence[int | str] | None, checkpoint_name: str
) -> list[Path]:
    """Checkpoint files of the requested folds (None: :func:`default_folds`).

    Raises :class:`ModelFolderError` naming the missing folder or file and what exists instead.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        siblings = sorted(p.name for p in model_dir.parent.glob("*__*") if p.is_dir()) if model_dir.parent.is_dir() else []
        raise ModelFolderError(
            f"{model_dir}: model folder not found. "
            + (f"Models of this dataset (TRAINER__PLANS): {', '.join(siblings)}; choose with -tr and -p."
               if siblings else
               "Train first (nnsam3d_train DATASET FOLD -tr TRAINER -p PLANS), or check -d/-tr/-p and nnSAM3D_results.")
        )
    present = available_folds(model_dir, checkpoint_name)
    if folds is None:
        if not present:
            others = {name: available_folds(model_dir, name) for name in CHECKPOINT_FILES.values()}
            hint = "; ".join(f"{name} in fold(s) {', '.join(f)}" for name, f in others.items() if f)
            raise ModelFolderError(
                f"{model_dir}: no fold_K/{checkpoint_name} found"
                + (f" ({hint} exist; choose it with --checkpoint)" if hint else "; train a fold first")
                + "."
            )
        folds = default_folds(model_dir, checkpoint_name)
    checkpoints = []
    for fold in folds:
        path = model_dir / f"fold_{fold}" / checkpoint_name
        if not path.is_file():
            raise ModelFolderError(
                f"{path}: checkpoint not found. Folds with {checkpoint_name}: "
                f"{', '.join(present) if present else 'none'}; pick them with -f, or finish training fold {fold}."
            )
        checkpoints.append(path)
    return checkpoints


def ensemble_name(trainers: Sequence[str], plans_name: str) -> str:
    """Order-independent name of an ensemble of trainers: ``ensemble__A__B__PLANS``."""
    return "__".join(["ensemble", *sorted(set(trainers)), plans_name])


def ensemble_folder(dataset: str | int, trainers: Sequence[str], plans_name: str) -> Path:
    """Folder of an ensemble's cross-validation results and ``postprocessing.json``."""
    return paths.results_dataset_dir(dataset) / ENSEMBLES_FOLDER / ensemble_name(trainers, plans_name)
