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
