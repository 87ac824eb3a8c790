"""nnU-Net's command-line habits: option spellings, configuration arguments, several datasets,
and plans/model names that do not exist."""

from __future__ import annotations

import pytest

from nnsam3d.commands import find_best_configuration, plan_and_preprocess, predict, train
from nnsam3d.commands.nnunet_habits import drop_configuration
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.inference.model_folders import ModelFolderError, default_folds, fold_checkpoints
from nnsam3d.trainers.splits import parse_fold


def _parsed(module, argv):
    return vars(module.build_parser().parse_args(drop_configuration(argv, "test")))


def test_predict_accepts_nnunets_spellings_with_the_same_meaning(capsys):
    ours = _parsed(predict, ["-i", "in", "-o", "out", "-d", "501", "--checkpoint", "best", "--step-size", "0.7",
                             "--disable-tta", "--save-probabilities", "--device", "cpu", "--continue",
                             "--num-parts", "3", "--part-id", "2", "--no-progress"])
    nnunet = _parsed(predict, ["-i", "in", "-o", "out", "-d", "501", "-c", "3d_fullres", "-chk", "checkpoint_best.pth",
                               "-step_size", "0.7", "--disable_tta", "--save_probabilities", "-device", "cpu",
                               "--continue_prediction", "-num_parts", "3", "-part_id", "2", "--disable_progress_bar",
                               "-npp", "3", "-nps", "3"])
    assert nnunet == ours
    err = capsys.readouterr().err
    assert "'3d_fullres' ignored: nnsam3d has one configuration" in err and "-npp/-nps has no effect" in err
    with pytest.raises(SystemExit):
        _parsed(predict, ["-i", "in", "-o", "out", "-d", "501", "-chk", "model.pth"])
    assert "not a checkpoint: use final or best" in capsys.readouterr().err


def test_train_and_find_best_configuration_accept_nnunets_spellings(capsys):
    ours = _parsed(train, ["501", "0", "--device", "cpu", "--num-gpus", "2"])
    assert _parsed(train, ["501", "3d_fullres", "0", "-device", "cpu", "-num_gpus", "2"]) == ours
    assert _parsed(find_best_configuration, ["501", "-c", "3d_fullres", "--disable_ensembling"]) == _parsed(
        find_best_configuration, ["501", "--disable-ensembling"])


@pytest.mark.parametrize("argv", [["501", "2d", "0"], ["501", "0", "-c", "3d_lowres"], ["501", "0", "-c"]])
def test_another_configuration_is_explained_not_taken_for_a_fold(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        train.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "nnsam3d has one configuration per plans" in err and "3d_fullres" in err and "fold must be" not in err


def test_a_mistyped_configuration_in_place_of_the_fold_is_explained():
    with pytest.raises(ValueError, match="looks like an nnU-Net configuration.*one configuration"):
        parse_fold("3d_full")


def test_several_datasets_are_planned_and_a_wrong_plans_name_lists_the_plans(nnsam3d_folders, capsys):
    for dataset_id in (990, 991):
        generate_synthetic_dataset(nnsam3d_folders.raw, SyntheticDatasetSpec(
            dataset_id=dataset_id, num_training=5, num_test=0, shape=(12, 32, 32)))
    assert plan_and_preprocess.main(["-d", "990", "991", "-c", "3d_fullres", "--backbone", "vit_tiny", "-np", "1"]) == 0
    for name in ("Dataset990_SyntheticCT", "Dataset991_SyntheticCT"):
        assert (nnsam3d_folders.preprocessed / name / "nnsam3d_plans.json").is_file()
    assert plan_and_preprocess.main(["-d", "990", "992", "--backbone", "vit_tiny", "-np", "1"]) == 1
    assert "1 of 2 datasets failed: 992" in capsys.readouterr().err

    assert train.main(["990", "0", "-p", "nnUNetPlans", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "nnUNetPlans.json: plans not found. Plans of this dataset: nnsam3d_plans (choose one with -p)" in err


def test_a_model_that_does_not_exist_lists_the_models_that_do(tmp_path):
    (tmp_path / "Dataset001_A" / "nnSAM3DTrainer__nnsam3d_plans").mkdir(parents=True)
    with pytest.raises(ModelFolderError, match="Models of this dataset .*: nnSAM3DTrainer__nnsam3d_plans"):
        fold_checkpoints(tmp_path / "Dataset001_A" / "nnSAM3DTrainer__nnUNetPlans", None, "checkpoint_final.pth")


def test_prediction_defaults_to_the_cross_validation_folds_and_else_to_fold_all(tmp_path):
    # nnU-Net's auto-detection leaves fold_all out of the default ensemble (it saw the cases the
    # other folds held out); where fold_all is the only model (too few cases for folds) it is used.
    model_dir = tmp_path / "Dataset001_A" / "nnSAM3DTrainer__nnsam3d_plans"
    (model_dir / "fold_all").mkdir(parents=True)
    (model_dir / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    assert default_folds(model_dir, "checkpoint_final.pth") == ["all"]
    assert fold_checkpoints(model_dir, None, "checkpoint_final.pth") == [model_dir / "fold_all" / "checkpoint_final.pth"]
    for fold in ("1", "0"):
        (model_dir / f"fold_{fold}").mkdir()
        (model_dir / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    assert default_folds(model_dir, "checkpoint_final.pth") == ["0", "1"]
    assert fold_checkpoints(model_dir, ["all"], "checkpoint_final.pth")[0].parent.name == "fold_all"
