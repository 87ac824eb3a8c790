"""splits_final.json: seeded 5-fold, written once, user files respected, fold 'all'."""

from __future__ import annotations

import json

import pytest

from nnsam3d.trainers.splits import (
    SPLITS_FILENAME,
    SplitsError,
    fold_cases,
    load_or_create_splits,
    make_splits,
    parse_fold,
)

CASES = [f"case_{i:02d}" for i in range(12)]


def test_five_folds_partition_the_cases_and_do_not_depend_on_input_order():
    splits = make_splits(CASES)
    assert len(splits) == 5
    validation = [case for fold in splits for case in fold["val"]]
    assert sorted(validation) == CASES  # every case validated exactly once
    for fold in splits:
        assert set(fold["train"]) == set(CASES) - set(fold["val"])
        assert len(fold["val"]) in (2, 3)
    assert make_splits(list(reversed(CASES))) == splits
    assert make_splits(CASES, seed=1) != splits


def test_splits_are_written_once_and_reused(tmp_path):
    first = load_or_create_splits(tmp_path, CASES)
    written = (tmp_path / SPLITS_FILENAME).read_text()
    # New cases appearing later must not reshuffle existing folds.
    second = load_or_create_splits(tmp_path, CASES + ["case_99"])
    assert second == first
    assert (tmp_path / SPLITS_FILENAME).read_text() == written


def test_a_user_provided_split_is_respected(tmp_path):
    custom = [{"train": CASES[:10], "val": CASES[10:]}, {"train": CASES[2:], "val": CASES[:2]}]
    (tmp_path / SPLITS_FILENAME).write_text(json.dumps(custom))
    splits = load_or_create_splits(tmp_path, CASES)
    assert splits == custom
    assert fold_cases(splits, "1", CASES).val == tuple(CASES[:2])
    with pytest.raises(SplitsError, match="folds 0..1"):
        fold_cases(splits, "3", CASES)


def test_a_split_naming_unknown_cases_is_reported_with_the_file(tmp_path):
    (tmp_path / SPLITS_FILENAME).write_text(json.dumps([{"train": ["ghost"], "val": CASES[:2]}]))
    with pytest.raises(SplitsError, match=r"splits_final.json.*not preprocessed: ghost.*delete it"):
        load_or_create_splits(tmp_path, CASES)


def test_fold_all_trains_and_validates_on_every_case():
    fold = fold_cases(make_splits(CASES), "all", CASES)
    assert fold.train == fold.val == tuple(CASES)


def test_too_few_cases_for_five_folds_suggests_fold_all():
    with pytest.raises(SplitsError, match="fold 'all'"):
        make_splits(CASES[:3])


def test_parse_fold():
    assert parse_fold("3") == "3"
    assert parse_fold("ALL") == "all"
    with pytest.raises(ValueError):
        parse_fold("first")
