"""Cross-validation splits: ``splits_final.json`` in the preprocessed dataset folder.

The file uses nnU-Net's format, a list with one ``{"train": [...], "val": [...]}`` entry per
fold, so that splits can be exchanged with nnU-Net. It is written once and reused by every later
run and every trainer, so that all models of a dataset are validated on the same cases. The folds
are nnU-Net's own for the same case identifiers (sorted identifiers, scikit-learn's
``KFold(n_splits=5, shuffle=True, random_state=12345)``), so results compare fold by fold with an
nnU-Net baseline. A file the user put there, or nnU-Net's own ``splits_final.json`` (from
``$nnUNet_preprocessed`` or a path given to ``nnsam3d_train --splits``), is used as is.

Fold ``all`` needs no splits, as in nnU-Net: it trains on every case and validates on them, so a
dataset with fewer cases than folds (1-4 cases for 5 folds) trains with ``all`` and nothing is
read or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnsam3d import paths
from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.trainers.distributed import DistributedContext

SPLITS_FILENAME = "splits_final.json"
DEFAULT_NUM_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345
ALL_FOLDS = "all"


class SplitsError(ValueError):
    """splits_final.json is malformed or does not fit the preprocessed cases or the fold asked for."""


class TooFewCasesError(SplitsError):
    """Fewer cases than folds: no k-fold split exists (a run of fold ``all`` never meets this)."""

    def __init__(self, num_folds: int, found: int, remedy: str | None = None):
        self.num_folds, self.found = num_folds, found
        self.remedy = remedy or f"Train with fold 'all', or write your own {SPLITS_FILENAME} with fewer folds."
        super().__init__(f"{self.requirement} {self.remedy}")

    def __reduce__(self):  # crosses process boundaries (launch of data-parallel training) intact
        return type(self), (self.num_folds, self.found, self.remedy)

    @property
    def requirement(self) -> str:
        return f"{self.num_folds}-fold cross-validation needs at least {self.num_folds} training cases, found {self.found}."


@dataclass(frozen=True)
class FoldCases:
    """Case identifiers of one fold. For fold ``all`` both lists hold every case."""

    fold: str
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_splits(case_ids: list[str], num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SPLIT_SEED) -> list[dict]:
    """nnU-Net's k-fold partition of ``case_ids``: every case is in exactly one validation set.

    Identical to nnU-Net v2's ``generate_crossval_split`` on its sorted identifiers, i.e. to
    ``sklearn.model_selection.KFold(num_folds, shuffle=True, random_state=seed)``: the indices
    of the sorted identifiers are shuffled once by ``numpy.random.RandomState(seed)`` (numpy
    keeps that legacy generator's stream fixed), the first ``n % k`` folds take one case more,
    and both lists keep the sorted order. Reimplemented in these few lines rather than importing
    scikit-learn at run time; ``tests/trainers/test_splits.py`` checks it against scikit-learn.
    The result depends only on the set of identifiers, the fold count and the seed.
    """
    cases = sorted(case_ids)
    if len(cases) < num_folds:
        raise TooFewCasesError(num_folds, len(cases))
    order = np.arange(len(cases))
    np.random.RandomState(seed).shuffle(order)
    fold_sizes = np.full(num_folds, len(cases) // num_folds)
    fold_sizes[: len(cases) % num_folds] += 1
    splits = []
    start = 0
    for size in fold_sizes:
        held_out = set(order[start : start + size].tolist())
        start += size
        splits.append({
            "train": [c for i, c in enumerate(cases) if i not in held_out],
            "val": [c for i, c in enumerate(cases) if i in held_out],
        })
    return splits


def _check_splits(content, path: Path, available: set[str]) -> list[dict]:
    remedy = f"Fix the file, or delete it so that nnsam3d writes a seeded {DEFAULT_NUM_FOLDS}-fold split."
    if not isinstance(content, list) or not content:
        raise SplitsError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}} entries. {remedy}")
    for index, entry in enumerate(content):
        if not isinstance(entry, dict) or not {"train", "val"} <= set(entry):
            raise SplitsError(f"{path}: fold {index} lacks a 'train' or 'val' list. {remedy}")
        unknown = sorted((set(entry["train"]) | set(entry["val"])) - available)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise SplitsError(
                f"{path}: fold {index} names {len(unknown)} case(s) that are not preprocessed: {shown}. {remedy}"
            )
        if not entry["val"]:
            raise SplitsError(f"{path}: fold {index} has no validation cases. {remedy}")
    return content


def _read_splits(path: Path) -> list:
    try:
        return read_json(path)
    except ValueError as error:  # the message names the file
        raise SplitsError(str(error)) from None


def load_or_create_splits(
    preprocessed_dataset_dir: str | os.PathLike,
    case_ids: list[str],
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
    create: bool = True,
    source: str | os.PathLike | None = None,
) -> list[dict]:
    """Read ``splits_final.json``, writing it first (atomically) when it does not exist.

    ``case_ids``: the preprocessed training cases. ``source``: an existing splits file (nnU-Net's,
    say) to adopt: it is checked and copied as is when the dataset has no splits yet; a dataset
    that already has different splits keeps them and the call fails, so that the models of one
    dataset never end up validated on different cases. Without ``source``, new splits are
    nnU-Net's folds (:func:`make_splits`). ``create=False`` only reads (the non-main ranks of a
    distributed run read what rank 0 wrote).
    """
    path = Path(preprocessed_dataset_dir) / SPLITS_FILENAME
    available = set(case_ids)
    if source is not None and create:
        source = Path(source)
        if not source.is_file():
            raise SplitsError(f"{source}: splits file not found.")
        adopted = _check_splits(_read_splits(source), source, available)
        if path.is_file() and source.resolve() != path.resolve() and _read_splits(path) != adopted:
            raise SplitsError(
                f"{path} already holds different splits (the models trained so far were validated on them). "
                f"Delete it to switch every model of this dataset to {source}."
            )
        if not path.is_file():
            write_json_atomic(path, adopted)
    if not path.is_file():
        if not create:
            raise SplitsError(f"{path}: not found.")
        write_json_atomic(path, make_splits(case_ids, num_folds, seed))
    return _check_splits(_read_splits(path), path, available)


def fold_of_run(context: DistributedContext, preprocessed_dataset_dir: Path, dataset_name: str, case_ids: list[str],
                fold: int | str, splits_file: str | os.PathLike | None, message=print) -> FoldCases:
    """The cases of ``fold`` for a training run, the same on every rank: rank 0 writes
    ``splits_final.json`` once (from ``splits_file``, else nnU-Net's splits of the dataset when
    ``$nnUNet_preprocessed`` has them, else new ones); the other ranks read what it wrote.

    Fold ``all`` touches no splits file (every rank takes every case), so that it trains on
    datasets too small for cross-validation and leaves the dataset's choice of folds open.
    """
    if str(fold) == ALL_FOLDS:
        if splits_file is not None and context.is_main:
            message(f"--splits {splits_file} not used: fold 'all' trains on every case")
        return fold_cases([], ALL_FOLDS, case_ids)
    path = Path(preprocessed_dataset_dir) / SPLITS_FILENAME
    if context.is_main:
        source = splits_file
        if source is None and not path.is_file():
            source = paths.nnunet_splits_file(dataset_name)  # a dataset nnU-Net already split
        if source is not None:
            message(f"cross-validation splits from {source}")
        try:
            splits = load_or_create_splits(preprocessed_dataset_dir, case_ids, source=source)
        except TooFewCasesError as error:
            raise TooFewCasesError(error.num_folds, error.found, (
                f"Fold {fold} needs cross-validation splits. Train on every case instead with "
                f"nnsam3d_train {dataset_name} all (nnU-Net's fold 'all', which has no held-out validation), or "
                f"write {path} yourself with fewer folds (a list of {{\"train\": [...], \"val\": [...]}})."
            )) from None
    context.barrier()
    if not context.is_main:
        splits = load_or_create_splits(preprocessed_dataset_dir, case_ids, create=False)
    return fold_cases(splits, fold, case_ids)


def fold_cases(splits: list[dict], fold: int | str, case_ids: list[str]) -> FoldCases:
    """The training and validation cases of ``fold`` (an index into ``splits``, or ``all``)."""
    if str(fold) == ALL_FOLDS:
        every = tuple(sorted(case_ids))
        return FoldCases(ALL_FOLDS, every, every)
    index = int(fold)
    if not 0 <= index < len(splits):
        raise SplitsError(
            f"fold {index} does not exist: {SPLITS_FILENAME} defines folds 0..{len(splits) - 1} (or use 'all')."
        )
    entry = splits[index]
    return FoldCases(str(index), tuple(entry["train"]), tuple(entry["val"]))


def parse_fold(text: str) -> str:
    """Command-line fold → ``"0"``..``"4"`` or ``"all"``; anything else raises ``ValueError``."""
    text = str(text).strip().lower()
    if text == ALL_FOLDS:
        return ALL_FOLDS
    if text.isdigit():
        return str(int(text))
    if text[:2] in ("2d", "3d"):
        raise ValueError(
            f"'{text}' looks like an nnU-Net configuration, but nnsam3d has one configuration per plans "
            f"(3D, like 3d_fullres): give the dataset and the fold only, e.g. nnsam3d_train 501 0"
        )
    raise ValueError(f"fold must be a number (0-{DEFAULT_NUM_FOLDS - 1}) or 'all', got '{text}'")
