"""The separable low-resolution simulation against batchgenerators' SimulateLowResolutionTransform,
its reference: same seed, same draws, same values."""

from __future__ import annotations

import numpy as np
import pytest

from nnsam3d.preprocessing.axis_matrices import zoom_matrix
from nnsam3d.trainers import low_resolution_transform
from nnsam3d.trainers.low_resolution_transform import SeparableLowResolutionTransform, zoom_cubic
from nnsam3d.trainers.reference_transforms import reference_low_resolution_transform


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape).astype(np.float32)
    data[..., : shape[-1] // 3] += 25.0  # a sharp edge: the spline overshoots, the clip matters
    return data


@pytest.mark.parametrize("ignore_axes, shape", [((0,), (2, 2, 5, 23, 30)), (None, (2, 1, 9, 14, 11)),
                                                (None, (3, 2, 17, 19))])
def test_equals_batchgenerators_with_the_same_seed(ignore_axes, shape):
    changed = 0
    for seed in range(12):
        data = _data(shape, seed)
        np.random.seed(seed)
        ours = SeparableLowResolutionTransform(p_per_sample=0.8, ignore_axes=ignore_axes)
        expected = reference_low_resolution_transform(ours)(data=data.copy())["data"]
        state_after_reference = np.random.get_state()[1].copy()
        np.random.seed(seed)
        got = ours(data=data.copy())["data"]
        np.testing.assert_array_equal(np.random.get_state()[1], state_after_reference)  # same draws
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        changed += int(not np.array_equal(got, data))
    assert changed >= 3  # the comparison covered the zooms, not only untouched samples


def test_ignored_axis_is_never_interpolated_across():
    data = np.zeros((1, 1, 4, 20, 20), dtype=np.float32)
    data[0, 0, 2] = 1.0  # one bright slice between dark ones
    transform = SeparableLowResolutionTransform(p_per_channel=1.0, p_per_sample=1.0, ignore_axes=(0,))
    np.random.seed(0)
    out = transform(data=data.copy())["data"]
    assert not out[0, 0, [0, 1, 3]].any() and np.allclose(out[0, 0, 2], 1.0)


def test_matrix_is_ndimage_zoom_of_any_vector():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    for size_in, size_out in [(7, 13), (13, 7), (1, 3), (30, 30)]:
        vector = rng.normal(size=size_in)
        expected = ndimage.zoom(vector, size_out / size_in, order=3, mode="nearest", grid_mode=True)
        np.testing.assert_allclose(zoom_matrix(size_in, size_out, order=3) @ vector, expected, rtol=0, atol=1e-12)


def test_the_clip_to_the_input_range_is_what_keeps_it_equal(monkeypatch):
    """scikit-image clips the spline's overshoot to the input's range; without the clip the
    values differ at the sharp edge by more than the tolerance (so the comparison can fail)."""
    volume = np.zeros((12, 12))
    volume[:, 6:] = 10.0
    clipped = zoom_cubic(volume, (12, 29))
    assert clipped.min() == 0.0 and clipped.max() == 10.0
    monkeypatch.setattr(low_resolution_transform.np, "clip", lambda array, low, high, out=None: array)
    assert zoom_cubic(volume, (12, 29)).max() > 10.0 + 1e-3
