"""NaN/inf voxels in an image to predict are replaced by the channel's smallest finite value, with a
warning naming the case: the prediction equals that of the image with those voxels filled in by
hand, and differs from what the raw NaN would give (all background after normalisation)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.commands.predict import main as predict_main
from nnsam3d.inference.predictor import Predictor
from nnsam3d.paths import training_output_dir
from nnsam3d.preprocessing.preprocessor import NonFiniteVoxelsWarning, replace_non_finite


def test_replace_non_finite_fills_each_channel_with_its_own_minimum():
    images = np.array([[[[1.0, np.nan], [np.inf, 5.0]]], [[[-3.0, 2.0], [-np.inf, 7.0]]]], dtype=np.float32)
    with pytest.warns(NonFiniteVoxelsWarning) as warned:
        assert replace_non_finite(images, "case_7") == 3
    assert [str(w.message).split(" replaced")[0] for w in warned] == [
        "case_7: 2 NaN/infinite voxel(s) in channel 0", "case_7: 1 NaN/infinite voxel(s) in channel 1"]
    np.testing.assert_array_equal(images[0, 0], [[1.0, 1.0], [1.0, 5.0]])
    np.testing.assert_array_equal(images[1, 0], [[-3.0, 2.0], [-3.0, 7.0]])


def test_nan_voxels_at_prediction_are_filled_and_named(random_model, tmp_path, capsys):
    case = random_model.case_ids[0]
    source = random_model.inputs / f"{case}_0000.nii.gz"
    image = nib.load(source)
    data = np.asarray(image.dataobj).astype(np.float32)
    region = (slice(2, 6), slice(10, 30), slice(10, 30))  # inside the body
    with_nan, filled = data.copy(), data.copy()
    with_nan[region] = np.nan
    filled[region] = data.min()
    inputs = {"nan": tmp_path / "nan", "filled": tmp_path / "filled"}
    for name, volume in (("nan", with_nan), ("filled", filled)):
        inputs[name].mkdir()
        nib.save(nib.Nifti1Image(volume, image.affine), inputs[name] / source.name)

    output = tmp_path / "out_nan"
    assert predict_main(["-i", str(inputs["nan"]), "-o", str(output), "-d", random_model.dataset, "--disable-tta",
                         "--no-progress", "--device", "cpu"]) == 0
    stderr = capsys.readouterr().err
    assert f"warning: {case}: {with_nan[region].size} NaN/infinite voxel(s) in channel 0 replaced by" in stderr

    predictor = Predictor.from_model_folder(
        training_output_dir(random_model.dataset, "nnSAM3DTrainer", "nnsam3d_plans"), device="cpu",
        use_mirroring=False, progress=False)
    predictor.predict_folder(inputs["filled"], tmp_path / "out_filled")
    from_nan = np.asarray(nib.load(output / f"{case}.nii.gz").dataobj)
    from_filled = np.asarray(nib.load(tmp_path / "out_filled" / f"{case}.nii.gz").dataobj)
    np.testing.assert_array_equal(from_nan, from_filled)
    shutil.rmtree(output)
