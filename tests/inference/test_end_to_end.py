"""The issue's end-to-end check: a 2-fold vit_tiny ensemble trained here with the real trainer,
then find_best_configuration, nnsam3d_predict on imagesTs and nnsam3d_evaluate.

Training is tiny (one epoch of a few iterations, network shrunk like the trainer tests do), so
the predictions are poor; what is checked is that every stage hands over correctly: files,
geometry of the outputs (RAS, LPS and oblique inputs), postprocessing.json, and metrics that
match hand-made predictions exactly.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.commands.evaluate import main as evaluate_main
from nnsam3d.commands.find_best_configuration import main as find_best_main
from nnsam3d.commands.predict import main as predict_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.image_io import read_segmentation, write_segmentation
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess, plans_path

SHRINK = {"patch_size": (16, 32, 32), "adapter_dim": 16, "decoder_channels": (8, 16, 32, 64)}
"""Shrinks the planner's vit_tiny network so that the two folds train and validate in seconds."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, point_folders):
    """(root, dataset name, raw dataset folder) after planning, preprocessing and training folds 0 and 1."""
    root = tmp_path_factory.mktemp("end_to_end")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        # Test cases 6 and 7 come out oblique and LPS; training cases cycle through the rest.
        spec = SyntheticDatasetSpec(num_training=6, num_test=2, shape=(16, 48, 48),
                                    orientations=("RAS", "LPS", "ASL", "PIR", "LAS", "RAS", "oblique", "LPS"))
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
        plans.network = plans.network.replace(**SHRINK)
        plans.save(plans_path(spec.folder_name))
        for fold in ("0", "1"):
            assert train_main([spec.folder_name, fold, "--epochs", "1", "--iterations-per-epoch", "4",
                               "--device", "cpu", "--num-workers", "0", "--npz"]) == 0
        yield root, spec.folder_name, raw_dir


def test_find_best_configuration_on_the_trained_folds(trained, capsys):
    root, dataset, _ = trained
    assert find_best_main([dataset]) == 0
    printed = capsys.readouterr().out
    assert f"nnsam3d_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset} -tr nnSAM3DTrainer -p nnsam3d_plans -f 0 1" in printed
    model_dir = root / "results" / dataset / "nnSAM3DTrainer__nnsam3d_plans"
    assert (model_dir / "postprocessing.json").is_file()
    summary = json.loads((model_dir / "crossval_results_folds_0_1" / "summary.json").read_text())
    assert len(summary["per_case"]) >= 2  # the validation cases of both folds


def test_ensemble_predicts_test_images_in_their_geometry(trained, tmp_path, capsys):
    _, dataset, raw_dir = trained
    output = tmp_path / "predictions"
    assert predict_main(["-i", str(raw_dir / "imagesTs"), "-o", str(output), "-d", dataset, "-f", "0", "1",
                         "--save-probabilities", "--no-progress"]) == 0
    assert "2 network(s)" in capsys.readouterr().err
    orientations = set()
    for image_file in sorted((raw_dir / "imagesTs").iterdir()):
        case_id = image_file.name[: -len("_0000.nii.gz")]
        image, predicted = nib.load(str(image_file)), nib.load(str(output / f"{case_id}.nii.gz"))
        assert predicted.shape == image.shape
        np.testing.assert_array_equal(predicted.affine, image.affine)
        assert int(predicted.header["sform_code"]) == int(image.header["sform_code"])
        assert (output / f"{case_id}.npz").is_file()
        orientations.add("".join(nib.aff2axcodes(image.affine)))
    assert len(orientations) == 2  # LPS and an oblique (nearest RAS axes) input

    # The predictions evaluate against labelsTs (quality is not the point after four iterations).
    assert evaluate_main(["-ref", str(raw_dir / "labelsTs"), "-pred", str(output), "-d", dataset]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["labels"]) == {"liver", "kidney", "lesion"} and len(summary["per_case"]) == 2


def test_evaluate_gives_the_expected_dice_on_hand_made_predictions(trained, tmp_path, capsys):
    _, dataset, raw_dir = trained
    references = sorted((raw_dir / "labelsTs").iterdir())
    hand_made = tmp_path / "hand_made"
    hand_made.mkdir()
    shutil.copy(references[0], hand_made / references[0].name)  # perfect
    labels, geometry = read_segmentation(references[1])
    without_kidney = np.where(labels == 2, 0, labels)  # kidney missed entirely, the rest perfect
    write_segmentation(without_kidney, geometry, hand_made / references[1].name)
    assert evaluate_main(["-ref", str(raw_dir / "labelsTs"), "-pred", str(hand_made), "-d", dataset]) == 0
    summary = json.loads((hand_made / "summary.json").read_text())
    assert summary["mean"]["liver"]["Dice"] == 1.0
    assert summary["mean"]["kidney"]["Dice"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert summary["mean"]["lesion"]["Dice"] == 1.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert summary["per_case"][1]["metrics"]["kidney"]["HD95_mm"] is None  # one side empty
    assert "0.5000" in capsys.readouterr().out
