"""``nnsam3d_predict`` on folders: robustness to broken cases, --continue, --num-parts, overlays,
postprocessing, the single-case input and the Python API (random-weight 2-fold models)."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nnsam3d.commands.predict import main as predict_main
from nnsam3d.inference.postprocessing import POSTPROCESSING_FILENAME, PostprocessingRules
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.image_io import read_segmentation

FAST = ["--disable-tta", "--no-progress", "--step-size", "1"]


def predict(mri_model, input_dir, output_dir, *extra) -> int:
    return predict_main(["-i", str(input_dir), "-o", str(output_dir), "-d", mri_model.dataset, *FAST, *extra])


def test_broken_cases_are_named_and_skipped_while_the_others_are_predicted(mri_model, copy_cases, tmp_path, capsys):
    inputs = tmp_path / "in"
    cases = copy_cases(mri_model, inputs)
    truncated, missing = cases[0], cases[1]
    channel = inputs / f"{truncated}_0001.nii.gz"
    channel.write_bytes(channel.read_bytes()[: len(channel.read_bytes()) // 2])  # a cut-off download
    (inputs / f"{missing}_0001.nii.gz").unlink()

    assert predict(mri_model, inputs, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "2 case(s) failed" in err
    assert f"{truncated}_0001.nii.gz" in err and "cannot be read" in err
    assert f"missing channel file(s) {missing}_0001.nii.gz" in err
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == [f"{c}.nii.gz" for c in cases[2:]]
    for case_id in cases[2:]:  # the others are complete and on their input's grid
        out, ref = nib.load(str(tmp_path / "out" / f"{case_id}.nii.gz")), nib.load(str(inputs / f"{case_id}_0000.nii.gz"))
        assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)


def test_continue_skips_written_cases_and_redoes_missing_ones(mri_model, copy_cases, tmp_path, capsys):
    inputs = tmp_path / "in"
    cases = copy_cases(mri_model, inputs, count=3)
    output = tmp_path / "out"
    assert predict(mri_model, inputs, output) == 0
    stamps = {c: (output / f"{c}.nii.gz").stat().st_mtime_ns for c in cases}
    (output / f"{cases[1]}.nii.gz").unlink()
    capsys.readouterr()
    assert predict(mri_model, inputs, output, "--continue") == 0
    err = capsys.readouterr().err
    assert "1 case(s) written" in err and "2 already there (--continue)" in err
    assert (output / f"{cases[1]}.nii.gz").is_file()
    for case_id in (cases[0], cases[2]):
        assert (output / f"{case_id}.nii.gz").stat().st_mtime_ns == stamps[case_id]
    assert not [p for p in output.iterdir() if p.name.startswith(".tmp")]  # atomic writes leave nothing behind


def test_parts_split_the_cohort_without_overlap(mri_model, copy_cases, tmp_path):
    inputs = tmp_path / "in"
    cases = copy_cases(mri_model, inputs)
    written = []
    for part in (0, 1):
        output = tmp_path / f"part{part}"
        assert predict(mri_model, inputs, output, "--num-parts", "2", "--part-id", str(part)) == 0
        written.append({p.name[: -len(".nii.gz")] for p in output.glob("*.nii.gz")})
    assert written[0] | written[1] == set(cases) and not written[0] & written[1]
    assert len(written[0]) == len(written[1]) == 2
    assert predict(mri_model, inputs, tmp_path / "bad", "--num-parts", "2", "--part-id", "2") == 1


def test_single_case_overlays_and_postprocessing(mri_model, tmp_path, capsys):
    rules_file = mri_model.model_dir / POSTPROCESSING_FILENAME
    PostprocessingRules(keep_largest_component=(1,)).save(rules_file)
    try:
        first_channel = sorted((mri_model.raw_dir / "imagesTs").iterdir())[0]
        output = tmp_path / "out"
        assert predict(mri_model, first_channel, output, "--save-overlays") == 0
        assert "keep the largest connected component of liver" in capsys.readouterr().err
    finally:
        rules_file.unlink()
    case_id = first_channel.name[: -len("_0000.nii.gz")]
    assert sorted(p.name for p in output.glob("*.nii.gz")) == [f"{case_id}.nii.gz"]
    def components(folder, label):
        labels = read_segmentation(folder / f"{case_id}.nii.gz")[0]
        return ndimage.label(labels == label, structure=np.ones((3, 3, 3)))[1]

    assert components(output, 1) == 1
    assert predict(mri_model, first_channel, tmp_path / "plain") == 0  # without postprocessing.json
    assert components(tmp_path / "plain", 1) > 1  # untrained weights: many islands
    picture = (output / "overlays" / f"{case_id}.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 10_000


def test_missing_model_and_input_problems_are_user_errors(mri_model, copy_cases, tmp_path, capsys):
    inputs = tmp_path / "in"
    copy_cases(mri_model, inputs, count=1)
    assert predict(mri_model, inputs, tmp_path / "out", "-f", "0", "3") == 1
    assert "fold_3/checkpoint_final.pth: checkpoint not found" in capsys.readouterr().err
    assert predict(mri_model, inputs, tmp_path / "out", "--checkpoint", "best") == 1
    assert "no fold_K/checkpoint_best.pth found (checkpoint_final.pth in fold(s) 0, 1 exist" in capsys.readouterr().err
    assert predict(mri_model, tmp_path / "nowhere", tmp_path / "out") == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert predict(mri_model, inputs, inputs) == 1
    assert "the output folder is the input folder" in capsys.readouterr().err


def test_python_api_predicts_a_numpy_volume_like_the_file_path(mri_model, tmp_path):
    predictor = Predictor.from_model_folder(mri_model.model_dir, folds=[0], device="cpu", use_mirroring=False)
    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[2:4]  # one case, two channels (oblique or LAS)
    predictor.predict_case_files(case_files, tmp_path / "case.nii.gz")
    from_files = nib.load(str(tmp_path / "case.nii.gz"))
    channels = [nib.load(str(f)) for f in case_files]
    volume = np.stack([c.get_fdata(dtype=np.float32) for c in channels])
    labels = predictor.predict_volume(volume, channels[0].affine)
    assert labels.shape == channels[0].shape
    np.testing.assert_array_equal(labels, from_files.get_fdata())
    with pytest.raises(ValueError, match="2-channel model"):
        predictor.predict_volume(volume[0], channels[0].affine)


def test_python_api_accepts_voxel_sizes_instead_of_an_affine(make_plans, make_random_folds, tmp_path):
    from nnsam3d.io.raw_dataset import DatasetDescription

    plans = make_plans(target_spacing=(1.5, 1.5, 3.0))
    description = DatasetDescription({"0": "CT"}, {"background": 0, "a": 1, "b": 2, "c": 3}, 1, ".nii.gz")
    make_random_folds(plans, description, tmp_path / "model", folds=("all",))
    predictor = Predictor.from_model_folder(tmp_path / "model", device="cpu", use_mirroring=False)
    volume = np.random.default_rng(0).normal(50, 100, size=(30, 40, 10)).astype(np.float32)  # (i, j, k), k coarse
    labels = predictor.predict_volume(volume, (1.0, 1.0, 3.0))
    assert labels.shape == volume.shape and labels.dtype == np.int16
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_the_network_time_of_a_folder_is_the_networks_share_of_the_wall_time(mri_model, copy_cases, tmp_path):
    predictor = Predictor.from_model_folder(mri_model.model_dir, device="cpu", use_mirroring=False, step_size=1.0)
    inputs = tmp_path / "in"
    copy_cases(mri_model, inputs, count=2)
    before = predictor.window_ensemble.network_seconds
    report = predictor.predict_folder(inputs, tmp_path / "out")
    assert report.ok and len(report.completed) == 2
    assert 0.0 < report.network_seconds < report.wall_seconds
    assert report.network_seconds == pytest.approx(predictor.window_ensemble.network_seconds - before)


def test_compile_mode_reaches_every_network(mri_model, copy_cases, tmp_path, monkeypatch):
    """``--compile-mode reduce-overhead`` compiles each fold's network in that mode (compilation
    itself is replaced by the identity here: ``tests/model/test_compile.py`` compiles for real)."""
    from nnsam3d.inference import predictor as predictor_module

    modes = []
    monkeypatch.setattr(predictor_module, "compile_network", lambda network, mode: modes.append(mode) or network)
    inputs = tmp_path / "in"
    cases = copy_cases(mri_model, inputs, count=1)
    assert predict(mri_model, inputs, tmp_path / "plain") == 0
    assert modes == []
    assert predict(mri_model, inputs, tmp_path / "graphs", "--compile-mode", "reduce-overhead") == 0
    assert modes and set(modes) == {"reduce-overhead"}
    assert predict(mri_model, inputs, tmp_path / "compiled", "--compile") == 0
    assert set(modes[len(modes) // 2:]) == {"default"}
    for folder in ("graphs", "compiled"):
        ours = read_segmentation(tmp_path / folder / f"{cases[0]}.nii.gz")[0]
        assert np.array_equal(ours, read_segmentation(tmp_path / "plain" / f"{cases[0]}.nii.gz")[0])
