"""The label map taken where the scores are (issue 24, point 3: resampled back to the case's grid
and argmaxed on the scores' device) equals the host's export from the probabilities, and the
predictor takes it exactly when the export needs no probabilities file."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from nnsam3d.inference.device_argmax import (
    EXPORT_BYTES_PER_CASE_VOXEL,
    GPU_EXPORT_SHARE,
    export_fits_on_gpu,
    labels_in_crop_box,
    labels_suffice,
)
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import RawCase
from nnsam3d.preprocessing.resampling import resample_scores, resample_scores_to_label_map, separate_axis_for


def scores_with_ties(seed: int = 0, shape=(5, 7, 6, 5)) -> torch.Tensor:
    """float16 probabilities-like scores where, at a third of the voxels, two classes share the
    maximum (the lower one must win) and class 0 is often the winner."""
    rng = np.random.default_rng(seed)
    scores = rng.random(shape).astype(np.float16)
    tied = rng.random(shape[1:]) < 1 / 3
    low = rng.integers(0, shape[0] - 1, size=shape[1:])
    high = rng.integers(low + 1, shape[0])
    peak = scores.max(axis=0) + np.float16(0.25)
    for k in range(shape[0]):
        scores[k][tied & ((low == k) | (high == k))] = peak[tied & ((low == k) | (high == k))]
    return torch.from_numpy(scores)


def test_the_crop_box_labels_equal_the_hosts_streamed_argmax_with_ties_to_the_lower_class(mri_model):
    """No change of grid: the device's running maximum (run here on CPU tensors) against the host's."""
    from nnsam3d.preprocessing.preprocessor import preprocess_case_files

    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[:2]
    properties = preprocess_case_files(case_files, mri_model.plans, case_id="case").properties
    scores = scores_with_ties(shape=(5, *properties.shape_after_resampling))
    labels = labels_in_crop_box(scores, properties)
    assert labels.dtype == np.int16 and labels.shape == tuple(properties.shape_after_cropping)
    np.testing.assert_array_equal(labels, resample_scores_to_label_map(scores.numpy(), scores.shape[1:]))
    np.testing.assert_array_equal(labels, np.argmax(scores.numpy(), axis=0))
    # The ties were real and went to the lower class, and every class won somewhere.
    assert set(np.unique(labels)) == set(range(scores.shape[0]))
    with pytest.raises(ValueError, match="do not match the preprocessed shape"):
        labels_in_crop_box(scores[:, :-1], properties)


def test_the_export_stays_on_the_gpu_only_where_it_fits():
    """The 512 x 512 x 300 CT of the README at a coarser network grid: 1.38 GB on the GPU."""
    case, network = 300 * 512 * 512, 150 * 459 * 459
    needed = case * EXPORT_BYTES_PER_CASE_VOXEL + network * 4
    assert needed == pytest.approx(1.38e9, rel=0.01)
    assert export_fits_on_gpu(case, network, free_bytes=int(needed / GPU_EXPORT_SHARE) + 1)
    assert not export_fits_on_gpu(case, network, free_bytes=int(needed / GPU_EXPORT_SHARE))


def test_labels_suffice_whenever_no_probabilities_file_is_written():
    assert labels_suffice(save_probabilities=False)
    assert not labels_suffice(save_probabilities=True)


TARGET_SPACINGS = {
    "the case's own grid": None,
    "a coarser grid": (4.5, 1.5, 1.5),
    "a coarse axis (nearest across slices)": (12.0, 1.5, 1.5),
}


def predictor_at_spacing(model, target_spacing, **options) -> Predictor:
    """The model's random folds with its plans' target spacing changed (the networks do not
    depend on it): cases are resampled to another grid and their scores back."""
    predictor = Predictor.from_model_folder(model.model_dir, device="cpu", use_mirroring=False, **options)
    if target_spacing is None:
        return predictor
    plans = dataclasses.replace(predictor.plans, target_spacing=target_spacing)
    return Predictor(predictor.networks, plans, predictor.description, predictor.device, use_mirroring=False)


@pytest.mark.parametrize("grid", TARGET_SPACINGS)
def test_files_written_from_the_device_argmax_equal_those_written_from_the_probabilities(mri_model, tmp_path, grid):
    predictor = predictor_at_spacing(mri_model, TARGET_SPACINGS[grid])
    inputs = mri_model.raw_dir / "imagesTs"
    predictor.predict_folder(inputs, tmp_path / "labels")  # argmax where the scores are
    predictor.predict_folder(inputs, tmp_path / "probabilities", save_probabilities=True)  # host argmax
    written = sorted((tmp_path / "labels").glob("*.nii.gz"))
    assert len(written) == 4
    foreground = 0
    for path in written:
        from_labels = nib.load(path)
        from_probabilities = nib.load(tmp_path / "probabilities" / path.name)
        np.testing.assert_array_equal(np.asarray(from_labels.dataobj), np.asarray(from_probabilities.dataobj))
        np.testing.assert_array_equal(from_labels.affine, from_probabilities.affine)
        foreground += int((np.asarray(from_labels.dataobj) > 0).sum())
    assert foreground > 0  # random folds paint classes, so equal files are not two empty ones


@pytest.mark.parametrize("grid", TARGET_SPACINGS)
def test_the_predictor_hands_only_labels_to_the_writer_when_they_suffice(mri_model, grid):
    """And those labels are scipy's resampling of the probabilities (the reference), argmaxed,
    wherever the two best classes are more than float32's rounding apart."""
    from nnsam3d.preprocessing.preprocessor import preprocess_case_files

    predictor = predictor_at_spacing(mri_model, TARGET_SPACINGS[grid], folds=[0])
    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[:2]
    loaded = preprocess_case_files(case_files, predictor.plans, case_id="case")
    properties = loaded.properties
    separate_axis = separate_axis_for(properties.spacing_after_resampling, properties.original_spacing)
    resampled = properties.shape_after_resampling != properties.shape_after_cropping
    assert resampled == (TARGET_SPACINGS[grid] is not None)
    assert (separate_axis == 0) == grid.startswith("a coarse axis")
    labels_only = predictor._predict_loaded(loaded, save_probabilities=False)
    with_probabilities = predictor._predict_loaded(loaded, save_probabilities=True)
    assert labels_only.probabilities is None and with_probabilities.labels is None
    assert labels_only.labels.shape == tuple(properties.shape_after_cropping)
    reference = resample_scores(with_probabilities.probabilities, properties.shape_after_cropping, separate_axis)
    top_two = np.sort(reference, axis=0)[-2:]
    clear = top_two[1] - top_two[0] > 1e-5
    assert clear.mean() > 0.99 and len(np.unique(labels_only.labels)) > 1
    np.testing.assert_array_equal(labels_only.labels[clear], np.argmax(reference, axis=0)[clear])
    np.testing.assert_array_equal(labels_only.label_map(), with_probabilities.label_map())
    # The reference path on request (what gpu_checks times it against).
    predictor.device_argmax = False
    assert predictor._predict_loaded(loaded, save_probabilities=False).labels is None


def test_the_predictor_resamples_images_on_its_own_device(mri_model, monkeypatch):
    """On a GPU that is the matrix path of ``preprocessing.device_resampling``."""
    from nnsam3d.preprocessing import preprocessor

    predictor = predictor_at_spacing(mri_model, TARGET_SPACINGS["a coarser grid"])
    seen, original = [], preprocessor.resample_image

    def recorded(*args, device=None, **kwargs):
        seen.append(device)
        return original(*args, device=device, **kwargs)

    monkeypatch.setattr(preprocessor, "resample_image", recorded)
    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[:2]
    predictor._preprocess(RawCase("case", tuple(case_files)))
    predictor.preprocess_volume(np.zeros((2, 8, 9, 10), dtype=np.float32), (1.0, 1.0, 3.0))
    predictor.predict_case_files(case_files, mri_model.root / "device_check" / "case.nii.gz")
    assert seen == [predictor.device] * 3


@pytest.mark.parametrize("shape", [(1, 10, 12, 8), (1, 1, 1, 9), (2, 10, 12, 8)],
                         ids=["a volume", "already in canonical order", "two channels"])
def test_a_volume_held_in_memory_is_preprocessed_without_touching_it(make_plans, shape):
    """The predictor normalises its own canonical copy in place; where the reordering had nothing
    to move (a grid whose canonical order is its memory order), it copies first."""
    from nnsam3d.io.raw_dataset import DatasetDescription
    from nnsam3d.model.network import build_network

    plans = make_plans((3.0, 1.0, 1.0), num_channels=shape[0])
    description = DatasetDescription(channel_names={str(c): "CT" for c in range(shape[0])},
                                     labels={"background": 0, "a": 1, "b": 2, "c": 3}, num_training=1,
                                     file_ending=".nii.gz")
    predictor = Predictor([build_network(plans.network)], plans, description, torch.device("cpu"))
    image = np.random.default_rng(5).normal(100.0, 20.0, size=shape).astype(np.float32)
    before = image.copy()
    case = predictor.preprocess_volume(image[0] if shape[0] == 1 else image, (1.0, 1.0, 3.0))
    np.testing.assert_array_equal(image, before)
    assert not np.shares_memory(case.data, image) and np.isfinite(case.data).all()
