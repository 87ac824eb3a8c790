"""Export writes the label map onto exactly the input file's grid, for any orientation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, phantom_case, write_case
from nnsam3d.inference.export import export_prediction, load_probabilities_file, probabilities_file_for
from nnsam3d.inference.postprocessing import PostprocessingRules
from nnsam3d.io.image_io import read_segmentation
from nnsam3d.preprocessing.preprocessor import preprocess_case_files

ORIENTATIONS = ("RAS", "LPS", "ASL", "PIR", "oblique")


def write_phantom(folder, orientation: str, seed: int = 0):
    """One CT phantom case written in ``orientation``; returns (image file, label file)."""
    spec = SyntheticDatasetSpec(shape=(12, 40, 36), spacing=(3.0, 1.0, 1.0))
    image, label, spacing = phantom_case(np.random.default_rng(seed), spec)
    write_case(folder / "images", folder / "labels", "case", np.rint(image), label, spacing, orientation)
    return folder / "images" / "case_0000.nii.gz", folder / "labels" / "case.nii.gz"


def one_hot(segmentation: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([segmentation == k for k in range(num_classes)]).astype(np.float16)


def assert_same_header(output, reference):
    out, ref = nib.load(str(output)), nib.load(str(reference))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(ref.affine)
    assert int(out.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"])
    np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms()[:3], ref.header.get_zooms()[:3], rtol=1e-6)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_export_restores_the_input_grid_exactly(tmp_path, orientation, make_plans):
    image_file, label_file = write_phantom(tmp_path, orientation)
    plans = make_plans(target_spacing=(3.0, 1.0, 1.0))  # no resampling: the round trip must be exact
    case = preprocess_case_files([image_file], plans, label_file=label_file, case_id="case")
    output = tmp_path / "out" / "case.nii.gz"
    export_prediction(one_hot(case.segmentation, 4), case.properties, output)
    assert_same_header(output, label_file)
    np.testing.assert_array_equal(nib.load(str(output)).get_fdata(), nib.load(str(label_file)).get_fdata())


@pytest.mark.parametrize("orientation", ("LPS", "oblique"))
def test_export_after_resampling_keeps_the_grid_and_the_anatomy(tmp_path, orientation, make_plans):
    image_file, label_file = write_phantom(tmp_path, orientation, seed=1)
    plans = make_plans(target_spacing=(2.0, 1.5, 1.5))
    case = preprocess_case_files([image_file], plans, label_file=label_file, case_id="case")
    assert case.properties.shape_after_resampling != case.properties.shape_after_cropping
    output = tmp_path / "out" / "case.nii.gz"
    export_prediction(one_hot(case.segmentation, 4), case.properties, output)
    assert_same_header(output, label_file)
    exported, reference = read_segmentation(output)[0], read_segmentation(label_file)[0]
    liver = (exported == 1), (reference == 1)
    assert 2 * (liver[0] & liver[1]).sum() / (liver[0].sum() + liver[1].sum()) > 0.9


def test_probabilities_file_holds_full_image_float16_and_properties(tmp_path, make_plans):
    image_file, label_file = write_phantom(tmp_path, "PIR")
    plans = make_plans(target_spacing=(3.0, 1.0, 1.0))
    case = preprocess_case_files([image_file], plans, label_file=label_file, case_id="case")
    output = tmp_path / "out" / "case.nii.gz"
    export_prediction(one_hot(case.segmentation, 4), case.properties, output, save_probabilities=True)
    assert probabilities_file_for(output) == tmp_path / "out" / "case.npz"
    probabilities, properties = load_probabilities_file(tmp_path / "out" / "case.npz")
    assert probabilities.dtype == np.float16
    assert probabilities.shape == (4, *case.properties.geometry.canonical_shape)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=1e-3)
    assert json.dumps(properties.to_json()) == json.dumps(case.properties.to_json())
    np.testing.assert_array_equal(np.argmax(probabilities, axis=0), read_segmentation(label_file)[0])


def test_postprocessing_is_applied_to_the_written_label_map(tmp_path, make_plans):
    image_file, label_file = write_phantom(tmp_path, "RAS")
    plans = make_plans(target_spacing=(3.0, 1.0, 1.0))
    case = preprocess_case_files([image_file], plans, label_file=label_file, case_id="case")
    segmentation = case.segmentation.copy()
    segmentation[0, 0, 0] = 2  # an island of "kidney" far from the kidney
    output = tmp_path / "case.nii.gz"
    export_prediction(one_hot(segmentation, 4), case.properties, output)
    assert (read_segmentation(output)[0] == 2).sum() == (case.segmentation == 2).sum() + 1
    export_prediction(one_hot(segmentation, 4), case.properties, output, postprocessing=PostprocessingRules((2,)))
    np.testing.assert_array_equal(read_segmentation(output)[0], read_segmentation(label_file)[0])
