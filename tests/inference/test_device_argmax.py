"""The argmax taken where the scores are (issue 24, point 3) equals the host's argmax, and the
predictor takes it exactly when the export needs no probabilities and no resampling."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from nnsam3d.inference.device_argmax import argmax_in_slabs, argmax_labels, labels_suffice
from nnsam3d.inference.predictor import Predictor
from nnsam3d.preprocessing.resampling import resample_scores_to_label_map


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


@pytest.mark.parametrize("slab_slices", [1, 2, 3, 7, 100])
def test_the_device_argmax_equals_the_hosts_streamed_argmax_whatever_the_slab(slab_slices):
    """PyTorch's argmax in slabs (the GPU path), run on CPU tensors."""
    scores = scores_with_ties()
    rows, columns = scores.shape[2:]
    host = resample_scores_to_label_map(scores.numpy(), scores.shape[1:])
    labels = argmax_in_slabs(scores, slab_bytes=slab_slices * rows * columns * 8)
    assert labels.dtype == np.int16 and labels.shape == tuple(scores.shape[1:])
    np.testing.assert_array_equal(labels, host)
    # The ties were real and went to the lower class, and every class won somewhere.
    assert set(np.unique(labels)) == set(range(scores.shape[0]))


def test_the_argmax_refuses_what_is_not_a_class_score_volume():
    for argmax in (argmax_labels, argmax_in_slabs):
        with pytest.raises(ValueError, match=r"expected class scores \(K, z, y, x\)"):
            argmax(torch.zeros(3, 4, 5))


def test_scores_on_the_host_take_the_reference_argmax():
    scores = scores_with_ties(seed=1)
    np.testing.assert_array_equal(argmax_labels(scores), resample_scores_to_label_map(scores.numpy(), scores.shape[1:]))


def test_labels_suffice_only_without_a_probabilities_file_and_without_resampling(mri_model):
    from nnsam3d.preprocessing.preprocessor import preprocess_case_files

    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[:2]
    properties = preprocess_case_files(case_files, mri_model.plans, case_id="case").properties
    assert properties.shape_after_resampling == properties.shape_after_cropping
    assert labels_suffice(properties, save_probabilities=False)
    assert not labels_suffice(properties, save_probabilities=True)
    coarser = dataclasses.replace(properties, shape_after_resampling=tuple(n - 1 for n in properties.shape_after_cropping))
    assert not labels_suffice(coarser, save_probabilities=False)


def test_files_written_from_the_device_argmax_equal_those_written_from_the_probabilities(mri_model, tmp_path):
    predictor = Predictor.from_model_folder(mri_model.model_dir, device="cpu", use_mirroring=False)
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


def test_the_predictor_hands_only_labels_to_the_writer_when_they_suffice(mri_model):
    from nnsam3d.preprocessing.preprocessor import preprocess_case_files

    predictor = Predictor.from_model_folder(mri_model.model_dir, folds=[0], device="cpu", use_mirroring=False)
    case_files = sorted((mri_model.raw_dir / "imagesTs").iterdir())[:2]
    loaded = preprocess_case_files(case_files, predictor.plans, case_id="case")
    labels_only = predictor._predict_loaded(loaded, save_probabilities=False)
    with_probabilities = predictor._predict_loaded(loaded, save_probabilities=True)
    assert labels_only.probabilities is None and with_probabilities.labels is None
    np.testing.assert_array_equal(
        labels_only.labels, resample_scores_to_label_map(with_probabilities.probabilities, loaded.data.shape[1:])
    )
    # The reference path on request (what gpu_checks times it against).
    predictor.device_argmax = False
    assert predictor._predict_loaded(loaded, save_probabilities=False).labels is None
