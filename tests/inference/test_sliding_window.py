"""Gaussian weights, window layout, and the sliding-window average (coverage, weighting, padding, batching)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnsam3d.inference.gaussian_weights import MIN_WEIGHT, gaussian_importance_map
from nnsam3d.inference.sliding_window import pad_to_patch_size, sliding_window_predict, window_slices, window_starts


def test_gaussian_map_peaks_at_the_centre_is_mirror_symmetric_and_positive():
    weights = gaussian_importance_map((8, 16, 12))
    assert weights.shape == (8, 16, 12) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=1e-3)  # the centre lies between voxels for even sizes
    for axis in range(3):
        np.testing.assert_array_equal(weights, np.flip(weights, axis))
    assert weights.min() >= MIN_WEIGHT
    # sigma = size / 8: one voxel off the centre pair along x (size 12, sigma 1.5) by hand.
    centre = weights[3, 7, 5]  # offsets 0.5, 0.5, 0.5 voxels from the centre
    one_more = weights[3, 7, 4]  # x offset 1.5
    assert one_more / centre == pytest.approx(math.exp(-0.5 * (1.5**2 - 0.5**2) / 1.5**2), rel=1e-5)


@pytest.mark.parametrize("size, patch, step", [(10, 4, 0.5), (64, 32, 0.5), (33, 32, 0.5), (100, 16, 0.25), (50, 20, 1.0)])
def test_windows_cover_every_voxel_from_border_to_border(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] + patch == size
    assert all(b - a <= step * patch + 1e-9 for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + patch] += 1
    assert covered.min() >= 1


def test_window_layout_by_hand():
    assert window_starts(32, 32, 0.5) == [0]
    assert window_starts(12, 8, 0.5) == [0, 4]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(21, 8, 0.5) == [0, 3, 6, 10, 13]  # 5 windows at 0, 3.25, 6.5, 9.75, 13 rounded (to even)
    assert len(window_slices((12, 20, 8), (8, 8, 8), 0.5)) == 2 * 4 * 1
    with pytest.raises(ValueError, match="smaller than the window"):
        window_starts(7, 8, 0.5)


def pointwise_network(windows: torch.Tensor) -> torch.Tensor:
    """Two-class 'network' whose output at a voxel depends only on that voxel's input."""
    p = torch.sigmoid(windows[:, :1])
    return torch.cat([p, 1 - p], dim=1)


def test_pointwise_predictions_are_reproduced_exactly_everywhere():
    # Every window predicts the same value at a voxel, so the weighted average must give it back:
    # any voxel missed, weighted twice or normalised wrongly would show.
    image = torch.randn(1, 19, 45, 37)
    result = sliding_window_predict(image, pointwise_network, 2, (8, 16, 16), step_size=0.5, batch_size=3)
    torch.testing.assert_close(result, pointwise_network(image[None])[0], atol=1e-6, rtol=1e-6)


def test_float16_accumulator_stays_within_half_precision():
    image = torch.randn(1, 19, 45, 37)
    result = sliding_window_predict(image, pointwise_network, 2, (8, 16, 16), accumulator_dtype=torch.float16)
    assert result.dtype == torch.float16
    # float16 keeps 11 significant bits; a voxel's sum sees a few roundings of ~2.5e-4 relative
    # each, on sums of a few units: a few 1e-3 at most, far below what decides an argmax.
    torch.testing.assert_close(result.float(), pointwise_network(image[None])[0], atol=5e-3, rtol=0)


def test_overlapping_windows_are_blended_with_the_gaussian_weights():
    # A (1, 1, 12) image holding its x coordinate; each window predicts its mean everywhere.
    # Windows start at x = 0 and 4 (patch 8, step 0.5); voxel x = 5 is window 0's voxel 5 and
    # window 1's voxel 1. Along x sigma = 1 and the centre is 3.5: weights exp(-1.5²/2), exp(-2.5²/2).
    image = torch.arange(12, dtype=torch.float32).reshape(1, 1, 1, 12)

    def window_mean(windows):
        return windows.mean(dim=(2, 3, 4), keepdim=True).expand(-1, 1, *windows.shape[2:]).clone()

    result = sliding_window_predict(image, window_mean, 1, (1, 1, 8), step_size=0.5)
    w0, w1 = math.exp(-0.5 * 1.5**2), math.exp(-0.5 * 2.5**2)
    expected = (w0 * 3.5 + w1 * 7.5) / (w0 + w1)
    assert result[0, 0, 0, 5].item() == pytest.approx(expected, rel=1e-5)
    assert result[0, 0, 0, 0].item() == pytest.approx(3.5)  # only window 0 covers x = 0
    assert result[0, 0, 0, 11].item() == pytest.approx(7.5)


class BorderSensitiveNetwork(torch.nn.Module):
    """A convolution with zero padding: its output near a window border depends on the window."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


def test_batched_windows_give_the_same_result_as_one_at_a_time():
    network = BorderSensitiveNetwork().eval()
    image = torch.randn(1, 20, 40, 36)
    with torch.no_grad():
        one = sliding_window_predict(image, network, 3, (8, 16, 16), batch_size=1)
        many = sliding_window_predict(image, network, 3, (8, 16, 16), batch_size=7)
        plain = network(image[None])[0]
    torch.testing.assert_close(one, many, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(one, plain, atol=1e-4)  # the windows' borders do matter here


def test_an_image_smaller_than_the_window_is_padded_and_cut_back():
    image = torch.randn(1, 5, 20, 50)  # smaller than the window along z and y
    padded, region = pad_to_patch_size(image, (8, 32, 32))
    assert tuple(padded.shape) == (1, 8, 32, 50)
    torch.testing.assert_close(padded[(slice(None), *region)], image)
    result = sliding_window_predict(image, pointwise_network, 2, (8, 32, 32))
    assert tuple(result.shape) == (2, 5, 20, 50)
    torch.testing.assert_close(result, pointwise_network(image[None])[0], atol=1e-6, rtol=1e-6)


def test_a_network_returning_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="expected"):
        sliding_window_predict(torch.zeros(1, 8, 8, 8), lambda w: w[:, :, :4], 1, (8, 8, 8))
