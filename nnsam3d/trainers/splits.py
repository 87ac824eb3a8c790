"""Cross-validation splits: ``splits_final.json`` in the preprocessed dataset folder.

The file uses nnU-Net's format, a list with one ``{"train": [...], "val": [...]}`` entry per
fold, so that splits can be exchanged with nnU-Net. It is written once (seeded 5-fold over the
sorted case identifiers) and reused by every later run and every trainer, so that all models of
a dataset are validated on the same cases. A file the user put there is respected as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnsam3d.io.atomic import read_json, write_json_atomic

SPLITS_FILENAME = "splits_final.json"
DEFAULT_NUM_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345
ALL_FOLDS = "all"


class SplitsError(ValueError):
    """splits_final.json is malformed or does not fit the preprocessed cases or the fold asked for."""


@dataclass(frozen=True)
class FoldCases:
    """Case identifiers of one fold. For fold ``all`` both lists hold every case."""

    fold: str
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_splits(case_ids: list[str], num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SPLIT_SEED) -> list[dict]:
    """Seeded k-fold partition of ``case_ids``: every case is in exactly one validation set.

    Fold sizes differ by at most one case. The result depends only on the set of identifiers,
    the fold count and the seed, not on the order the identifiers come in.
    """
    cases = sorted(case_ids)
    if len(cases) < num_folds:
        raise SplitsError(
            f"{num_folds}-fold cross-validation needs at least {num_folds} training cases, found "
            f"{len(cases)}. Train with fold 'all', or write your own {SPLITS_FILENAME} with fewer folds."
        )
    order = np.random.default_rng(seed).permutation(len(cases))
    splits = []
    for validation_indices in np.array_split(order, num_folds):
        validation = sorted(cases[i] for i in validation_indices)
        held_out = set(validation)
        splits.append({"train": [c for c in cases if c not in held_out], "val": validation})
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


def load_or_create_splits(
    preprocessed_dataset_dir: str | os.PathLike,
    case_ids: list[str],
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
    create: bool = True,
) -> list[dict]:
    """Read ``splits_final.json``, writing it first (atomically) when it does not exist.

    ``case_ids``: the preprocessed training cases. ``create=False`` only reads (the non-main
    ranks of a distributed run read what rank 0 wrote).
    """
    path = Path(preprocessed_dataset_dir) / SPLITS_FILENAME
    if not path.is_file():
        if not create:
            raise SplitsError(f"{path}: not found.")
        write_json_atomic(path, make_splits(case_ids, num_folds, seed))
    return _check_splits(read_json(path), path, set(case_ids))


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
    raise ValueError(f"fold must be a number (0-{DEFAULT_NUM_FOLDS - 1}) or 'all', got '{text}'")
