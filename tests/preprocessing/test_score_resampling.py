"""Class scores → label map, one class at a time: the same as resampling every class and
taking the argmax, with or without a change of grid; PyTorch's interpolation against scipy's
zoom, its reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.preprocessing.resampling import resample_score_channel, resample_scores, resample_scores_to_label_map
from nnsam3d.preprocessing.score_resampling import host_tensor, resample_score_tensor, scores_to_labels


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_same_grid_equals_argmax_and_ties_go_to_the_lower_class(dtype):
    rng = np.random.default_rng(0)
    scores = rng.random((5, 6, 7, 8)).astype(dtype)
    scores[3, 0, 0, 0] = scores[1, 0, 0, 0] = 2.0  # a tie between classes 1 and 3
    labels = resample_scores_to_label_map(scores, scores.shape[1:])
    assert labels.dtype == np.int16
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=0))
    assert labels[0, 0, 0] == 1


@pytest.mark.parametrize("separate_axis", [None, 0])
def test_new_grid_equals_argmax_of_the_resampled_scores(separate_axis):
    rng = np.random.default_rng(1)
    scores = rng.random((4, 5, 12, 10)).astype(np.float32)
    new_shape = (9, 17, 14)
    labels = resample_scores_to_label_map(scores, new_shape, separate_axis)
    expected = np.argmax(resample_scores(scores, new_shape, separate_axis), axis=0)
    np.testing.assert_array_equal(labels, expected)


def test_probabilities_are_restored_class_by_class_into_the_full_image():
    from nnsam3d.io.geometry import ImageGeometry
    from nnsam3d.preprocessing.case_properties import CaseProperties
    from nnsam3d.preprocessing.cropping import paste_into_box
    from nnsam3d.preprocessing.geometry_restore import restore_probabilities

    # File axes (i, j, k) = (x, y, z) with 4 mm slices: canonical (z, y, x) shape (12, 30, 25) at 4 x 1 x 1 mm.
    geometry = ImageGeometry(shape=(25, 30, 12), affine=tuple(map(tuple, np.diag([1.0, 1.0, 4.0, 1.0]))))
    assert geometry.canonical_shape == (12, 30, 25) and geometry.spacing == (4.0, 1.0, 1.0)
    properties = CaseProperties(
        case_id="case", geometry=geometry,
        original_spacing=geometry.spacing, shape_before_cropping=geometry.canonical_shape,
        crop_bbox=((2, 10), (5, 25), (3, 21)), shape_after_cropping=(8, 20, 18),
        spacing_after_resampling=(8.0, 2.0, 2.0), shape_after_resampling=(4, 10, 9),
    )
    # Each class affine in the voxel coordinates: linear interpolation in-plane reproduces it
    # exactly (at the clamped coordinate near the edges), and 8 mm → 4 mm slices (the anisotropic
    # axis, nearest neighbour) repeats every slice twice.
    z, y, x = np.meshgrid(np.arange(4), np.arange(10), np.arange(9), indexing="ij")
    class_1 = 0.1 + 0.05 * z + 0.02 * x
    class_2 = 0.2 + 0.03 * y
    probabilities = np.stack([1 - class_1 - class_2, class_1, class_2]).astype(np.float32)

    restored = restore_probabilities(probabilities, properties)
    assert restored.dtype == np.float16 and restored.shape == (3, 12, 30, 25)

    # grid_mode sampling: output voxel j of a 2x zoom reads input coordinate j / 2 - 1/4
    z_source = np.arange(8) // 2
    y_source = np.clip(np.arange(20) / 2 - 0.25, 0, 9)
    x_source = np.clip(np.arange(18) / 2 - 0.25, 0, 8)
    z, y, x = np.meshgrid(z_source, y_source, x_source, indexing="ij")
    class_1 = 0.1 + 0.05 * z + 0.02 * x
    class_2 = 0.2 + 0.03 * y
    in_box = np.stack([1 - class_1 - class_2, class_1, class_2])
    expected = np.zeros((3, 12, 30, 25))
    expected[0] = 1.0  # background outside the box
    expected[:, 2:10, 5:25, 3:21] = in_box
    np.testing.assert_allclose(restored, expected, atol=1e-3)

    all_at_once = paste_into_box(resample_scores(probabilities, (8, 20, 18), separate_axis=0), properties.crop_bbox,
                                 (12, 30, 25), fill=0.0)
    outside = np.ones((12, 30, 25), dtype=bool)
    outside[2:10, 5:25, 3:21] = False
    all_at_once[0][outside] = 1.0
    np.testing.assert_allclose(restored, all_at_once, atol=1e-3)
    assert np.all(restored[0, :2] == 1) and np.all(restored[1:, :2] == 0)
    np.testing.assert_allclose(restored[:, 2:10, 5:25, 3:21].astype(np.float32).sum(axis=0), 1.0, atol=5e-3)


# PyTorch's interpolation (score_resampling) against scipy's zoom (the reference).
GRIDS = [
    ((6, 20, 22), (11, 31, 17), None),  # up along two axes, down along one
    ((12, 40, 41), (5, 17, 64), None),
    ((5, 20, 22), (15, 31, 17), 0),  # a coarse axis: nearest across, linear in-plane
    ((20, 5, 22), (31, 12, 22), 1),
    ((20, 22, 5), (9, 30, 2), 2),
    ((5, 20, 22), (5, 31, 17), 0),  # in-plane only
    ((5, 20, 22), (13, 20, 22), 0),  # across only
    ((1, 20, 22), (1, 9, 30), 0),  # one slice
]


@pytest.mark.parametrize("shape, new_shape, separate_axis", GRIDS)
def test_pytorchs_channel_resampling_equals_scipys_zoom(shape, new_shape, separate_axis):
    rng = np.random.default_rng(len(shape) + sum(new_shape))
    channel = rng.random(shape).astype(np.float32)
    expected = resample_score_channel(channel, new_shape, separate_axis)
    resampled = resample_score_tensor(torch.from_numpy(channel), new_shape, separate_axis)
    assert resampled.dtype == torch.float32 and tuple(resampled.shape) == tuple(new_shape)
    np.testing.assert_allclose(resampled.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape, new_shape, separate_axis", GRIDS)
def test_labels_equal_the_argmax_of_scipys_resampled_scores_wherever_it_is_clear(shape, new_shape, separate_axis):
    """Scores 1e-6 apart may be ordered either way by float32 against float64 weights; every
    other voxel gets the reference's class."""
    rng = np.random.default_rng(sum(shape))
    scores = rng.random((5, *shape)).astype(np.float16)
    reference = resample_scores(scores, new_shape, separate_axis)
    labels = scores_to_labels(torch.from_numpy(scores), new_shape, separate_axis)
    assert labels.dtype == torch.int16
    top_two = np.sort(reference, axis=0)[-2:]
    clear = top_two[1] - top_two[0] > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels.numpy()[clear], np.argmax(reference, axis=0)[clear])
    # The host entry point runs the same code.
    np.testing.assert_array_equal(resample_scores_to_label_map(scores, new_shape, separate_axis), labels.numpy())


def test_a_nan_score_never_wins_as_in_the_reference():
    scores = np.random.default_rng(3).random((3, 4, 6, 5)).astype(np.float32)
    scores[2, 1, 2, 3] = np.nan  # the class that would win elsewhere...
    scores[2, 0] = 5.0
    scores[1, 1, 2, 3] = 0.0
    scores[0, 3, 4, 4] = np.nan  # the first class: a running maximum that took it would stay NaN
    labels = scores_to_labels(torch.from_numpy(scores), (4, 6, 5)).numpy()
    assert np.all(labels[0] == 2)
    # ...and at its NaN voxel the best of the others wins, as the reference's "greater than" decides.
    assert labels[1, 2, 3] == (0 if scores[0, 1, 2, 3] > 0.0 else 1)
    assert labels[3, 4, 4] == 1 + int(scores[2, 3, 4, 4] > scores[1, 3, 4, 4])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(labels, _reference_streamed_labels(scores))


def _reference_streamed_labels(scores):
    best = np.full(scores.shape[1:], -np.inf, dtype=np.float32)
    labels = np.zeros(scores.shape[1:], dtype=np.int16)
    for k, channel in enumerate(scores):
        better = channel > best
        best[better], labels[better] = channel[better], k
    return labels


def test_read_only_and_reversed_arrays_reach_pytorch_as_copies():
    scores = np.random.default_rng(4).random((3, 4, 6, 5)).astype(np.float16)
    expected = resample_scores_to_label_map(scores.copy(), (7, 6, 9))
    read_only = scores.copy()
    read_only.setflags(write=False)
    np.testing.assert_array_equal(resample_scores_to_label_map(read_only, (7, 6, 9)), expected)
    reversed_classes = scores[::-1].copy()[::-1]  # the same values through a negative stride
    np.testing.assert_array_equal(resample_scores_to_label_map(reversed_classes, (7, 6, 9)), expected)
    assert host_tensor(scores).data_ptr() == scores.ctypes.data  # writable: shared, not copied
