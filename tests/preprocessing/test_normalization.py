"""Each normalisation scheme on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from nnsam3d.schemas.plans import ChannelNormalization
from nnsam3d.preprocessing.cropping import nonzero_mask
from nnsam3d.preprocessing.normalization import needs_nonzero_mask, normalize_image


def image(seed=0, shape=(1, 6, 10, 12), scale=100.0, offset=50.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale + offset).astype(np.float32)


def test_ct_clips_to_the_bounds_then_uses_the_dataset_statistics():
    data = np.array([[[[-2000.0, -50.0, 0.0, 40.0, 3000.0]]]], dtype=np.float32)
    scheme = ChannelNormalization(
        0, "CT", "CTNormalization", mean=10.0, std=20.0, lower_bound=-100.0, upper_bound=200.0
    )
    result = normalize_image(data.copy(), [scheme])
    np.testing.assert_allclose(result[0, 0, 0], [(-100 - 10) / 20, -3.0, -0.5, 1.5, (200 - 10) / 20])


def test_ct_without_statistics_names_the_channel():
    with pytest.raises(ValueError, match="channel 0 \\(CT\\) uses CTNormalization but has no mean, std"):
        normalize_image(image(), [ChannelNormalization(0, "CT", "CTNormalization", lower_bound=0.0, upper_bound=1.0)])


def test_z_score_per_image():
    result = normalize_image(image(), [ChannelNormalization(0, "T2", "ZScoreNormalization")])
    assert result.dtype == np.float32
    assert result.mean() == pytest.approx(0.0, abs=1e-5)
    assert result.std() == pytest.approx(1.0, abs=1e-5)


def test_z_score_inside_the_nonzero_mask_keeps_the_background_zero():
    data = image(offset=500.0)
    data[:, :, :3] = 0.0  # background rows
    data[:, 2:4, 6, 6] = 0.0  # dark voxels inside the body: a hole, filled in the mask
    scheme = ChannelNormalization(0, "T1", "ZScoreNormalization", use_nonzero_mask=True)
    assert needs_nonzero_mask([scheme])
    mask = nonzero_mask(data)
    assert mask[2, 6, 6], "holes inside the body count as inside"
    result = normalize_image(data.copy(), [scheme], mask)
    assert np.all(result[:, :, :3] == 0.0)
    inside = result[0][mask]
    assert inside.mean() == pytest.approx(0.0, abs=1e-5)
    assert inside.std() == pytest.approx(1.0, abs=1e-5)


def test_rescale_and_no_normalisation_per_channel():
    data = np.concatenate([image(1), image(2)])
    schemes = [
        ChannelNormalization(0, "rescale_to_0_1", "RescaleTo01Normalization"),
        ChannelNormalization(1, "noNorm", "NoNormalization"),
    ]
    original = data.copy()
    result = normalize_image(data, schemes)
    assert result[0].min() == 0.0 and result[0].max() == pytest.approx(1.0)
    np.testing.assert_array_equal(result[1], original[1])
    assert not needs_nonzero_mask(schemes)


def test_constant_image_does_not_divide_by_zero():
    constant = np.full((1, 2, 3, 4), 7.0, np.float32)
    result = normalize_image(constant, [ChannelNormalization(0, "T1", "ZScoreNormalization")])
    assert np.all(result == 0.0)


def test_channel_count_must_match_the_plans():
    with pytest.raises(ValueError, match="plans normalise channels \\[0\\] but the image has 2 channel"):
        normalize_image(image(shape=(2, 3, 4, 5)), [ChannelNormalization(0, "T1", "ZScoreNormalization")])
