"""``nnsam3d_demo`` end to end with a tiny budget: every stage runs, outputs keep the inputs'
geometry, the table is printed, and a second run resumes instead of starting over."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from nnsam3d.commands.demo import main as demo_main


def test_demo_runs_every_stage_and_resumes(nnsam3d_folders, tmp_path, capsys, reported_dice_check):
    workdir = tmp_path / "demo"
    # a fixed amount of work (3 epochs x 2 iterations) cut short by a tiny time budget
    arguments = ["--workdir", str(workdir), "--epochs", "3", "--iterations-per-epoch", "2", "--minutes", "0.001",
                 "--device", "cpu"]

    assert demo_main(arguments) == 0
    printed = capsys.readouterr().out
    for expected in ("1/5", "2/5", "3/5", "4/5", "5/5", "liver", "kidney", "lesion", "foreground mean",
                     "3 epochs x 2 iterations, at most 0.001 minutes", "epoch 1/3:"):
        assert expected in printed
    # The budget, not the 2 nominal epochs still to go, bounds the time left shown: none here.
    assert " left" not in next(line for line in printed.splitlines() if "epoch 1/3:" in line)
    assert "Note: the time budget (0.001 minutes) ended training after 1 of 3 epochs" in printed

    dataset = workdir / "raw" / "Dataset990_SyntheticCT"
    fold = workdir / "results" / "Dataset990_SyntheticCT" / "nnSAM3DTrainer__nnsam3d_plans" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "progress.png").is_file()
    assert (fold / "validation" / "summary.json").is_file()

    test_images = sorted((dataset / "imagesTs").glob("*_0000.nii.gz"))
    predictions = sorted((workdir / "predictions").glob("*.nii.gz"))
    assert len(predictions) == len(test_images) == 4
    for image_file, prediction_file in zip(test_images, predictions):
        image, prediction = nib.load(image_file), nib.load(prediction_file)
        assert prediction_file.name == image_file.name.replace("_0000", "")
        assert prediction.shape == image.shape
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}

    summary = json.loads((workdir / "predictions" / "summary.json").read_text())
    assert set(summary["labels"]) == {"liver", "kidney", "lesion"}
    assert len(summary["per_case"]) == len(predictions)
    reported_dice_check(summary, workdir / "predictions", dataset / "labelsTs", {"liver": 1, "kidney": 2, "lesion": 3})
    report = workdir / "report" / "index.html"
    assert printed.rstrip().endswith(f"Report of the test predictions (open in a browser): {report.resolve().as_uri()}")
    assert report.read_text().count('<tr data-id="') == 4
    assert "fold_0" in (workdir / "report" / "training" / "index.html").read_text()

    checkpoint_time = (fold / "checkpoint_final.pth").stat().st_mtime_ns
    assert demo_main(arguments) == 0
    printed = capsys.readouterr().out
    assert "reusing the trained fold" in printed
    assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == checkpoint_time


def test_demo_rejects_a_non_positive_budget(tmp_path, capsys):
    assert demo_main(["--workdir", str(tmp_path / "demo"), "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_in_mha_format_runs_end_to_end(nnsam3d_folders, tmp_path, capsys):
    import SimpleITK as sitk

    workdir = tmp_path / "demo"
    assert demo_main(["--workdir", str(workdir), "--format", "mha", "--minutes", "0.02", "--iterations-per-epoch", "1",
                      "--device", "cpu"]) == 0
    assert ".mha files" in capsys.readouterr().out
    dataset = workdir / "raw" / "Dataset996_SyntheticCTmha"
    assert not list(dataset.rglob("*.nii.gz"))
    test_images = sorted((dataset / "imagesTs").glob("*_0000.mha"))
    predictions = sorted((workdir / "predictions_mha").glob("*.mha"))
    assert len(predictions) == len(test_images) == 4
    for image_file, prediction_file in zip(test_images, predictions):
        image, prediction = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(prediction_file))
        assert prediction.GetSize() == image.GetSize() and prediction.GetOrigin() == image.GetOrigin()
        assert prediction.GetSpacing() == image.GetSpacing() and prediction.GetDirection() == image.GetDirection()
    summary = json.loads((workdir / "predictions_mha" / "summary.json").read_text())
    assert summary["file_ending"] == ".mha" and len(summary["per_case"]) == 4
