"""Folder evaluation: spacing from the affine, orientation-independent, summary.json, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnsam3d.commands.evaluate import main as evaluate_main
from nnsam3d.evaluation.evaluate_folder import EvaluationInputError, evaluate_folders
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import write_segmentation

LABELS = {"background": 0, "organ": 1, "tumour": 2}


def ras_geometry(shape, spacing_xyz, origin=(10.0, -20.0, 5.0)) -> ImageGeometry:
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = origin
    return ImageGeometry(shape=tuple(shape), affine=tuple(map(tuple, affine)))


def lps_geometry_of(ras: ImageGeometry) -> ImageGeometry:
    """The same world grid stored with flipped x and y axes (LPS file order)."""
    affine = ras.affine_array.copy()
    for axis in (0, 1):
        affine[:3, 3] += affine[:3, axis] * (ras.shape[axis] - 1)
        affine[:3, axis] *= -1
    return ImageGeometry(shape=ras.shape, affine=tuple(map(tuple, affine)))


def write(folder, name, canonical, geometry):
    write_segmentation(canonical.astype(np.int16), geometry, folder / f"{name}.nii.gz")


@pytest.fixture
def folders(tmp_path):
    """Two cases with known metrics. File grid (x, y, z) = (16, 16, 12), spacing 0.8, 0.8, 2.5 mm.

    case_a: organ predicted shifted by 2 slices (z) out of a 4-slice block (Dice 0.5, surfaces
        2 x 2.5 = 5 mm apart on the faces); tumour absent in both (undefined).
    case_b: organ perfect; tumour in the reference only (Dice 0, HD95 undefined). The
        prediction is written in LPS order: same world grid, other file orientation.
    """
    reference, prediction = tmp_path / "ref", tmp_path / "pred"
    geometry = ras_geometry((16, 16, 12), (0.8, 0.8, 2.5))
    shape = geometry.canonical_shape  # (z, y, x) = (12, 16, 16)
    ref_a = np.zeros(shape, np.int16)
    ref_a[2:6, 4:12, 4:12] = 1
    pred_a = np.zeros(shape, np.int16)
    pred_a[4:8, 4:12, 4:12] = 1
    write(reference, "case_a", ref_a, geometry)
    write(prediction, "case_a", pred_a, geometry)
    ref_b = ref_a.copy()
    ref_b[8:10, 2:4, 2:4] = 2
    write(reference, "case_b", ref_b, geometry)
    write(prediction, "case_b", ref_a, lps_geometry_of(geometry))
    return reference, prediction


def test_summary_by_hand(folders, tmp_path):
    reference, prediction = folders
    summary = evaluate_folders(reference, prediction, LABELS, ".nii.gz", output_file=tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    cases = {c["case_id"]: c for c in summary["per_case"]}
    assert cases["case_a"]["spacing_mm"] == pytest.approx([2.5, 0.8, 0.8])
    organ_a = cases["case_a"]["metrics"]["organ"]
    assert organ_a["Dice"] == pytest.approx(0.5) and organ_a["IoU"] == pytest.approx(1 / 3)
    assert organ_a["HD95_mm"] == pytest.approx(5.0)  # 2 slices of 2.5 mm, from the affine
    assert cases["case_a"]["metrics"]["tumour"] == {"Dice": None, "IoU": None, "NSD": None, "HD95_mm": None,
                                                     "reference_voxels": 0, "prediction_voxels": 0, "TP": 0, "FP": 0,
                                                     "FN": 0, "TN": 12 * 16 * 16, "n_pred": 0, "n_ref": 0}
    organ_b = cases["case_b"]["metrics"]["organ"]
    assert (organ_b["Dice"], organ_b["NSD"], organ_b["HD95_mm"]) == (1.0, 1.0, 0.0)  # LPS file, same grid
    tumour_b = cases["case_b"]["metrics"]["tumour"]
    assert (tumour_b["Dice"], tumour_b["NSD"], tumour_b["HD95_mm"]) == (0.0, 0.0, None)

    assert summary["mean"]["organ"]["Dice"] == pytest.approx(0.75)
    assert summary["mean"]["tumour"]["Dice"] == 0.0 and summary["mean"]["tumour"]["cases"]["Dice"] == 1
    assert summary["mean"]["tumour"]["HD95_mm"] is None and summary["mean"]["tumour"]["cases"]["HD95_mm"] == 0
    assert summary["foreground_mean"]["Dice"] == pytest.approx((0.75 + 0.0) / 2)
    assert summary["foreground_mean"]["HD95_mm"] == pytest.approx(2.5)  # organ only: (5 + 0) / 2
    assert set(summary["labels"]) == {"organ", "tumour"}


def test_parallel_evaluation_gives_the_same_summary(folders):
    reference, prediction = folders
    one = evaluate_folders(reference, prediction, LABELS, ".nii.gz")
    two = evaluate_folders(reference, prediction, LABELS, ".nii.gz", num_processes=2)
    assert one == two


def test_prediction_on_another_grid_or_without_reference_is_named(folders, tmp_path):
    reference, prediction = folders
    shifted = ras_geometry((16, 16, 12), (0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0))
    write(prediction, "case_a", np.zeros(shifted.canonical_shape), shifted)
    with pytest.raises(EvaluationInputError, match="case_a.nii.gz: not on the grid of the reference"):
        evaluate_folders(reference, prediction, LABELS, ".nii.gz")
    write(prediction, "case_c", np.zeros(shifted.canonical_shape), shifted)
    with pytest.raises(EvaluationInputError, match="case_c.nii.gz: no reference"):
        evaluate_folders(reference, prediction, LABELS, ".nii.gz")


def test_command_writes_the_summary_and_prints_the_table(folders, tmp_path, capsys):
    reference, prediction = folders
    output = tmp_path / "out" / "summary.json"
    assert evaluate_main(["-ref", str(reference), "-pred", str(prediction), "-l", "1", "-o", str(output),
                          "--nsd-tolerance-mm", "5"]) == 0
    summary = json.loads(output.read_text())
    assert list(summary["mean"]) == ["1"] and summary["nsd_tolerance_mm"] == 5.0
    assert summary["per_case"][0]["metrics"]["1"]["NSD"] > 0.5  # the 5 mm faces now count
    printed = capsys.readouterr().out
    assert "foreground mean" in printed and "0.7500" in printed
    # labels from a dataset.json next to the reference folder
    (reference.parent / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}))
    assert evaluate_main(["-ref", str(reference), "-pred", str(prediction)]) == 0
    assert set(json.loads((prediction / "summary.json").read_text())["labels"]) == {"organ", "tumour"}


def test_command_without_labels_says_how_to_give_them(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path)]) == 1
    assert "-d DATASET or -l" in capsys.readouterr().err


def test_summary_carries_nnunets_keys(folders):
    """Scripts written for nnU-Net's summary.json: mean["1"], foreground_mean, metric_per_case, TP/FP/FN."""
    reference, prediction = folders
    summary = json.loads(json.dumps(evaluate_folders(reference, prediction, LABELS, ".nii.gz")))
    assert summary["mean"]["1"] == summary["mean"]["organ"] and summary["mean"]["2"] == summary["mean"]["tumour"]
    case_a = next(c for c in summary["metric_per_case"] if c["prediction_file"].endswith("case_a.nii.gz"))
    organ = case_a["metrics"]["1"]
    block = 4 * 8 * 8
    assert (organ["TP"], organ["FP"], organ["FN"], organ["n_ref"], organ["n_pred"]) == (block / 2, block / 2, block / 2, block, block)
    assert organ["TN"] == 12 * 16 * 16 - organ["TP"] - organ["FP"] - organ["FN"]
    assert organ["Dice"] == pytest.approx(2 * organ["TP"] / (2 * organ["TP"] + organ["FP"] + organ["FN"]))
    assert summary["mean"]["1"]["FP"] == pytest.approx(block / 4)  # case_a block/2, case_b 0
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.375)
    assert summary["foreground_mean"]["n_ref"] == pytest.approx((block + (0 + 8) / 2) / 2)  # tumour: 8 voxels in case_b


def test_missing_predictions_are_named_unless_chill(folders, capsys):
    reference, prediction = folders
    (prediction / "case_b.nii.gz").unlink()
    with pytest.raises(EvaluationInputError, match=r"no prediction for 1 of the 2 reference case\(s\).*case_b.nii.gz.*--chill"):
        evaluate_folders(reference, prediction, LABELS, ".nii.gz")
    assert evaluate_main(["-ref", str(reference), "-pred", str(prediction), "-l", "1"]) == 1
    assert "case_b.nii.gz" in capsys.readouterr().err and not (prediction / "summary.json").exists()
    assert evaluate_main(["-ref", str(reference), "-pred", str(prediction), "-l", "1", "--chill"]) == 0
    assert [c["case_id"] for c in json.loads((prediction / "summary.json").read_text())["per_case"]] == ["case_a"]


def test_the_ignore_label_is_neither_scored_nor_a_class(tmp_path):
    """Predictions inside the unannotated region change nothing; outside they count as usual."""
    labels = {"background": 0, "organ": 1, "ignore": 2}
    geometry = ras_geometry((16, 16, 12), (1.0, 1.0, 2.0))
    shape = geometry.canonical_shape
    reference = np.full(shape, 2, np.int16)  # sparsely annotated: slices 3-6 only
    reference[3:7] = 0
    reference[3:7, 4:12, 4:12] = 1
    prediction = np.zeros(shape, np.int16)
    prediction[3:7, 4:12, 4:12] = 1
    write(tmp_path / "ref", "c", reference, geometry)
    write(tmp_path / "pred", "c", prediction, geometry)
    perfect = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels, ".nii.gz")
    assert list(perfect["labels"]) == ["organ"] and perfect["ignore_label"] == 2
    organ = perfect["per_case"][0]["metrics"]["organ"]
    assert organ["Dice"] == 1.0 and organ["HD95_mm"] == 0.0 and organ["FP"] == 0
    assert organ["TN"] == 4 * 16 * 16 - 4 * 8 * 8  # annotated voxels only
    prediction[0:3] = 1  # organ predicted all over the unannotated slices: not scored
    write(tmp_path / "pred", "c", prediction, geometry)
    assert evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels, ".nii.gz")["per_case"] == perfect["per_case"]
    prediction[5, 0, 0] = 1  # one false positive in an annotated slice: scored
    write(tmp_path / "pred", "c", prediction, geometry)
    one_fp = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels, ".nii.gz")["per_case"][0]["metrics"]["organ"]
    assert one_fp["FP"] == 1 and one_fp["Dice"] < 1.0
    # The command keeps the dataset's ignore label out of the metrics also when -l picks classes.
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}))
    prediction[5, 0, 0] = 0
    write(tmp_path / "pred", "c", prediction, geometry)
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-l", "1"]) == 0
    assert json.loads((tmp_path / "pred" / "summary.json").read_text())["per_case"][0]["metrics"]["organ"]["FP"] == 0
