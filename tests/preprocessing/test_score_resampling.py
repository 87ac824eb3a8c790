"""Class scores → label map, one class at a time: the same as resampling every class and
taking the argmax, with or without a change of grid."""

from __future__ import annotations

import numpy as np
import pytest

from nnsam3d.preprocessing.resampling import resample_scores, resample_scores_to_label_map


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
