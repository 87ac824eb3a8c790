"""Model folders ensemble only when their networks see the same thing: otherwise a clear refusal."""

from __future__ import annotations

import pytest

from nnsam3d.inference.ensemble_loading import IncompatibleModelsError, load_ensemble
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import DatasetDescription

LABELS = {"background": 0, "liver": 1, "kidney": 2, "lesion": 3}


def _description(labels=LABELS) -> DatasetDescription:
    return DatasetDescription({"0": "CT"}, dict(labels), 1, ".nii.gz")


def test_folders_with_the_same_preprocessing_and_labels_load_as_one_ensemble(make_plans, make_random_folds, tmp_path):
    plans = make_plans()
    make_random_folds(plans, _description(), tmp_path / "a", folds=(0, 1))
    make_random_folds(plans, _description(), tmp_path / "b", folds=(0,), seed=7)
    ensemble = load_ensemble([tmp_path / "a", tmp_path / "b"], None, "checkpoint_final.pth")
    assert len(ensemble.networks) == 3
    assert [path.parent.parent.name for path in ensemble.checkpoint_files] == ["a", "a", "b"]


@pytest.mark.parametrize("difference", ["target spacing", "labels"])
def test_folders_that_disagree_are_refused_naming_both_checkpoints(make_plans, make_random_folds, tmp_path, difference):
    make_random_folds(make_plans(), _description(), tmp_path / "a", folds=(0,))
    if difference == "target spacing":
        make_random_folds(make_plans(target_spacing=(2.0, 1.0, 1.0)), _description(), tmp_path / "b", folds=(0,))
    else:
        renamed = {"background": 0, "liver": 1, "spleen": 2, "lesion": 3}
        make_random_folds(make_plans(), _description(renamed), tmp_path / "b", folds=(0,))
    with pytest.raises(IncompatibleModelsError) as refused:
        Predictor.from_model_folders([tmp_path / "a", tmp_path / "b"], device="cpu")
    message = str(refused.value)
    assert str(tmp_path / "a" / "fold_0" / "checkpoint_final.pth") in message
    assert str(tmp_path / "b" / "fold_0" / "checkpoint_final.pth") in message
    assert "cannot be ensembled" in message
