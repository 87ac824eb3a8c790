"""Choosing the configuration and the postprocessing on constructed cross-validation predictions.

Reference: a cube "organ" and two separate "kidney" blocks (two components by nature).
Trainer A predicts both exactly, plus a far-away island of organ: keeping the organ's largest
component removes the island (helps), keeping the kidneys' largest component deletes a kidney
(hurts). Trainer B is A with a thinner organ. Their ensemble (probabilities averaged) keeps only
what both predict, i.e. B's organ: A must win, with postprocessing for the organ only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnsam3d.commands.find_best_configuration import main as find_best_main
from nnsam3d.model_selection.find_best_configuration import ConfigurationError, find_best_configuration
from nnsam3d.inference.export import save_probabilities_file
from nnsam3d.inference.postprocessing import PostprocessingRules
from nnsam3d.io.atomic import write_json_atomic
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import write_segmentation
from nnsam3d.preprocessing.case_properties import CaseProperties

DATASET = "Dataset992_Constructed"
LABELS = {"background": 0, "organ": 1, "kidney": 2}
GEOMETRY = ImageGeometry(shape=(24, 24, 16), affine=((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 2.0, 0), (0, 0, 0, 1)))
CASES = [f"case_{i}" for i in range(4)]
FOLDS = {"0": CASES[:2], "1": CASES[2:]}


def reference_labels(shift: int) -> np.ndarray:
    labels = np.zeros(GEOMETRY.canonical_shape, np.int16)  # (z, y, x) = (16, 24, 24)
    labels[4:12, 6 + shift : 16 + shift, 6:16] = 1
    labels[4:10, 2:5, 18:22] = 2
    labels[4:10, 19:22, 18:22] = 2
    return labels


def trainer_a(reference: np.ndarray) -> np.ndarray:
    prediction = reference.copy()
    prediction[13:15, 20:22, 2:4] = 1  # an island far from the organ
    return prediction


def trainer_b(reference: np.ndarray) -> np.ndarray:
    prediction = trainer_a(reference)
    organ = np.argwhere(reference == 1)
    prediction[organ[:, 0].min(), :, :][prediction[organ[:, 0].min()] == 1] = 0  # one slice of organ less
    prediction[organ[:, 0].max(), :, :][prediction[organ[:, 0].max()] == 1] = 0
    return prediction


def identity_properties(case_id: str) -> CaseProperties:
    shape = GEOMETRY.canonical_shape
    return CaseProperties(case_id, GEOMETRY, GEOMETRY.spacing, shape, tuple((0, n) for n in shape), shape,
                          GEOMETRY.spacing, shape)


@pytest.fixture
def cross_validation(nnsam3d_folders):
    raw = nnsam3d_folders.raw / DATASET
    write_json_atomic(raw / "dataset.json", {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 4,
                                             "file_ending": ".nii.gz"})
    for index, case_id in enumerate(CASES):
        write_segmentation(reference_labels(index % 2), GEOMETRY, raw / "labelsTr" / f"{case_id}.nii.gz")
    for trainer, predict in (("TrainerA", trainer_a), ("TrainerB", trainer_b)):
        for fold, cases in FOLDS.items():
            folder = nnsam3d_folders.results / DATASET / f"{trainer}__nnsam3d_plans" / f"fold_{fold}" / "validation"
            for case_id in cases:
                prediction = predict(reference_labels(CASES.index(case_id) % 2))
                write_segmentation(prediction, GEOMETRY, folder / f"{case_id}.nii.gz")
                one_hot = np.stack([prediction == k for k in range(3)]).astype(np.float32)
                save_probabilities_file(one_hot, identity_properties(case_id), folder / f"{case_id}.npz")
    return nnsam3d_folders.results / DATASET


def test_best_trainer_and_largest_component_decision(cross_validation, capsys):
    messages = []
    result = find_best_configuration(DATASET, ["TrainerA", "TrainerB"], "nnsam3d_plans", message=messages.append)
    names = [c["name"] for c in result["candidates"]]
    assert names == ["TrainerA", "TrainerB", "ensemble__TrainerA__TrainerB__nnsam3d_plans"]
    dice = {c["name"]: c["foreground_mean_dice"] for c in result["candidates"]}
    assert dice["TrainerA"] > dice["TrainerB"]
    assert dice["ensemble__TrainerA__TrainerB__nnsam3d_plans"] == pytest.approx(dice["TrainerB"])
    assert result["best"]["name"] == "TrainerA" and result["folds"] == ["0", "1"]

    rules = PostprocessingRules.load(cross_validation / "TrainerA__nnsam3d_plans" / "postprocessing.json")
    assert rules.keep_largest_component == (1,)
    evidence = rules.evidence["classes"]
    assert evidence["organ"]["mean_dice_with_largest_component"] == pytest.approx(1.0)
    assert evidence["organ"]["mean_dice_without"] < 1.0
    assert evidence["kidney"]["mean_dice_without"] == pytest.approx(1.0)
    assert evidence["kidney"]["mean_dice_with_largest_component"] < 1.0  # one kidney deleted

    stored = json.loads((cross_validation / "best_configuration.json").read_text())
    assert stored["predict_command"] == (
        f"nnsam3d_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {DATASET} -tr TrainerA -p nnsam3d_plans -f 0 1"
    )
    assert stored["predict_command"] in messages[-1]
    summary = cross_validation / "TrainerA__nnsam3d_plans" / "crossval_results_folds_0_1" / "summary.json"
    assert len(json.loads(summary.read_text())["per_case"]) == 4


def test_command_and_missing_fold(cross_validation, capsys):
    assert find_best_main([DATASET, "-tr", "TrainerB", "--disable-ensembling"]) == 0
    out = capsys.readouterr().out
    assert "-tr TrainerB" in out and "keep the largest connected component of organ" in out
    assert find_best_main([DATASET, "-tr", "TrainerA", "-f", "0", "1", "2"]) == 1
    assert "fold_2/validation: no validation predictions" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="no fold_K/validation"):
        find_best_configuration(DATASET, ["Missing"], "nnsam3d_plans")


def test_leftover_temporary_files_and_fold_all_are_ignored(cross_validation):
    # A crashed atomic write leaves ".tmp-<id>-CASE<ending>" without its .npz; it must neither be
    # evaluated nor cost the trainer its place in the ensembles.
    for trainer in ("TrainerA", "TrainerB"):
        validation = cross_validation / f"{trainer}__nnsam3d_plans" / "fold_0" / "validation"
        (validation / ".tmp-0123456789ab-case_0.nii.gz").write_bytes(b"half a file")
    # fold_all trains on every case, so its validation would overlap the other folds'.
    fold_all = cross_validation / "TrainerA__nnsam3d_plans" / "fold_all" / "validation"
    write_segmentation(trainer_a(reference_labels(0)), GEOMETRY, fold_all / "case_0.nii.gz")

    result = find_best_configuration(DATASET, ["TrainerA", "TrainerB"], "nnsam3d_plans", message=lambda _: None)
    assert result["folds"] == ["0", "1"]
    assert [c["name"] for c in result["candidates"]][-1] == "ensemble__TrainerA__TrainerB__nnsam3d_plans"
    for candidate in result["candidates"]:
        summary = json.loads(Path(candidate["summary"]).read_text())
        assert [case["case_id"] for case in summary["per_case"]] == CASES
