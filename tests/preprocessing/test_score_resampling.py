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
    from nnsam3d.io.nifti import ImageGeometry
    from nnsam3d.preprocessing.case_properties import CaseProperties
    from nnsam3d.preprocessing.cropping import paste_into_box
    from nnsam3d.preprocessing.geometry_restore import restore_probabilities

    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(3), size=(4, 10, 9)).transpose(3, 0, 1, 2).astype(np.float32)
    properties = CaseProperties(
        case_id="case", geometry=ImageGeometry(shape=(12, 30, 25), affine=tuple(map(tuple, np.eye(4)))),
        original_spacing=(4.0, 1.0, 1.0), shape_before_cropping=(12, 30, 25),
        crop_bbox=((2, 10), (5, 25), (3, 21)), shape_after_cropping=(8, 20, 18),
        spacing_after_resampling=(8.0, 2.0, 2.0), shape_after_resampling=(4, 10, 9),
    )
    restored = restore_probabilities(probabilities, properties)
    assert restored.dtype == np.float16 and restored.shape == (3, 12, 30, 25)

    expected = paste_into_box(resample_scores(probabilities, (8, 20, 18), separate_axis=0), properties.crop_bbox,
                              (12, 30, 25), fill=0.0)
    outside = np.ones((12, 30, 25), dtype=bool)
    outside[2:10, 5:25, 3:21] = False
    expected[0][outside] = 1.0  # background outside the box
    np.testing.assert_allclose(restored, expected, atol=1e-3)
    assert np.all(restored[0, :2] == 1) and np.all(restored[1:, :2] == 0)
    np.testing.assert_allclose(restored[:, 2:10, 5:25, 3:21].astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
