"""splits_final.json: nnU-Net's 5 folds, written once, user and nnU-Net files respected, fold 'all'."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnsam3d.trainers.distributed import DistributedContext
from nnsam3d.trainers.splits import (
    SPLITS_FILENAME,
    SplitsError,
    TooFewCasesError,
    fold_cases,
    fold_of_run,
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


def nnunet_generate_crossval_split(train_identifiers, seed=12345, n_splits=5):
    """nnU-Net v2's algorithm (nnunetv2/utilities/crossval_split.py with nnUNetTrainer.do_split's
    sorting), written here with scikit-learn as the independent reference."""
    from sklearn.model_selection import KFold

    identifiers = list(np.sort(list(train_identifiers)))
    splits = []
    for train_idx, test_idx in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(identifiers):
        splits.append({"train": list(np.array(identifiers)[train_idx]), "val": list(np.array(identifiers)[test_idx])})
    return splits


@pytest.mark.parametrize("count", [20, 23, 5])
def test_folds_are_nnunets_for_the_same_case_ids(count):
    ids = [f"BraTS_{i:03d}" for i in np.random.default_rng(count).permutation(400)[:count]]
    reference = [{k: [str(c) for c in v] for k, v in fold.items()} for fold in nnunet_generate_crossval_split(ids)]
    assert make_splits(ids) == reference
    assert make_splits(ids, num_folds=3, seed=7) == nnunet_generate_crossval_split(ids, seed=7, n_splits=3)


def test_nnunets_own_splits_file_is_adopted_as_is_and_never_silently_replaced(tmp_path):
    theirs = tmp_path / "nnUNet_splits.json"
    custom = [{"train": CASES[3:], "val": CASES[:3]}, {"train": CASES[:3], "val": CASES[3:]}]
    theirs.write_text(json.dumps(custom))
    ours = tmp_path / "preprocessed"
    ours.mkdir()
    assert load_or_create_splits(ours, CASES, source=theirs) == custom
    assert json.loads((ours / SPLITS_FILENAME).read_text()) == custom
    assert load_or_create_splits(ours, CASES, source=theirs) == custom  # the same again: fine
    theirs.write_text(json.dumps(make_splits(CASES)))
    with pytest.raises(SplitsError, match="already holds different splits"):
        load_or_create_splits(ours, CASES, source=theirs)
    with pytest.raises(SplitsError, match="not found"):
        load_or_create_splits(ours, CASES, source=tmp_path / "missing.json")
    theirs.write_text("[{")
    with pytest.raises(SplitsError, match="nnUNet_splits.json: not valid JSON"):
        load_or_create_splits(tmp_path / "other", CASES, source=theirs)


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


@pytest.mark.parametrize("count", [1, 2, 4])
def test_fold_all_of_a_run_needs_no_splits_however_few_the_cases(tmp_path, count):
    messages = []
    fold = fold_of_run(DistributedContext(), tmp_path, "Dataset001_Few", CASES[:count], "all", None, messages.append)
    assert fold.train == fold.val == tuple(CASES[:count])
    assert not (tmp_path / SPLITS_FILENAME).exists() and messages == []
    # A splits file given with fold 'all' is neither read nor adopted, and the run says so.
    fold_of_run(DistributedContext(), tmp_path, "Dataset001_Few", CASES[:count], "all", tmp_path / "theirs.json",
                messages.append)
    assert messages == [f"--splits {tmp_path / 'theirs.json'} not used: fold 'all' trains on every case"]
    assert not (tmp_path / SPLITS_FILENAME).exists()


def test_a_numbered_fold_of_a_run_with_too_few_cases_names_the_command_and_the_file(tmp_path):
    with pytest.raises(TooFewCasesError) as raised:
        fold_of_run(DistributedContext(), tmp_path, "Dataset001_Few", CASES[:2], "1", None, lambda _: None)
    message = str(raised.value)
    assert message.startswith("5-fold cross-validation needs at least 5 training cases, found 2. Fold 1 needs")
    assert "nnsam3d_train Dataset001_Few all" in message and str(tmp_path / SPLITS_FILENAME) in message
    assert not (tmp_path / SPLITS_FILENAME).exists()
    # Fewer folds written by the user: the numbered folds train.
    (tmp_path / SPLITS_FILENAME).write_text(json.dumps([{"train": CASES[:1], "val": CASES[1:2]},
                                                        {"train": CASES[1:2], "val": CASES[:1]}]))
    fold = fold_of_run(DistributedContext(), tmp_path, "Dataset001_Few", CASES[:2], "1", None, lambda _: None)
    assert fold.val == (CASES[0],)


def test_parse_fold():
    assert parse_fold("3") == "3"
    assert parse_fold("ALL") == "all"
    with pytest.raises(ValueError):
        parse_fold("first")
