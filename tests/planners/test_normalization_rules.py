"""Normalisation scheme per channel from its name, and when z-scoring uses the non-zero mask."""

import pytest

from nnsam3d.schemas.fingerprint import IntensityStatistics
from nnsam3d.planners.normalization_rules import (
    channel_normalizations,
    cropping_shrank_images,
    median_relative_size_after_cropping,
    normalization_scheme_for,
)

CT_STATISTICS = IntensityStatistics(
    mean=80.0, std=120.0, median=60.0, percentile_00_5=-950.0, percentile_99_5=1400.0, min=-1024.0, max=3000.0
)


@pytest.mark.parametrize(
    "name, scheme",
    [
        ("CT", "CTNormalization"),
        ("ct", "CTNormalization"),
        ("noNorm", "NoNormalization"),
        ("NONORM", "NoNormalization"),
        ("rescale_to_0_1", "RescaleTo01Normalization"),
        ("zscore", "ZScoreNormalization"),
        ("T2", "ZScoreNormalization"),
        ("FLAIR", "ZScoreNormalization"),
        ("ADC", "ZScoreNormalization"),
    ],
)
def test_scheme_from_channel_name(name, scheme):
    assert normalization_scheme_for(name) == scheme


def test_ct_channel_takes_the_fingerprint_foreground_statistics():
    [ct] = channel_normalizations({"0": "CT"}, {"0": CT_STATISTICS}, use_nonzero_mask=False)
    assert (ct.channel, ct.modality, ct.scheme) == (0, "CT", "CTNormalization")
    assert (ct.mean, ct.std) == (80.0, 120.0)
    assert (ct.lower_bound, ct.upper_bound) == (-950.0, 1400.0)
    assert ct.use_nonzero_mask is False


def test_nonzero_mask_applies_to_z_scored_channels_only():
    names = {"0": "T1", "1": "CT", "2": "noNorm", "3": "rescale_to_0_1"}
    statistics = {str(i): CT_STATISTICS for i in range(4)}
    normalizations = channel_normalizations(names, statistics, use_nonzero_mask=True)
    assert [n.channel for n in normalizations] == [0, 1, 2, 3]
    assert [n.scheme for n in normalizations] == [
        "ZScoreNormalization",
        "CTNormalization",
        "NoNormalization",
        "RescaleTo01Normalization",
    ]
    assert [n.use_nonzero_mask for n in normalizations] == [True, False, False, False]
    # Per-image schemes carry no dataset statistics.
    assert normalizations[0].mean is None and normalizations[2].lower_bound is None


def test_channels_come_out_in_index_order_even_beyond_nine():
    names = {str(i): "T2" for i in range(11)}
    assert [n.channel for n in channel_normalizations(names, {}, use_nonzero_mask=False)] == list(range(11))


def test_ct_channel_without_statistics_is_an_error_naming_the_channel():
    with pytest.raises(ValueError, match="channel 1 .'CT'."):
        channel_normalizations({"0": "T1", "1": "CT"}, {"0": CT_STATISTICS}, use_nonzero_mask=False)


def test_nonzero_mask_when_cropping_removed_at_least_a_quarter():
    before = [(100, 200, 200)] * 3
    # Skull-stripped-like: cropping keeps half of each image.
    assert median_relative_size_after_cropping(before, [(100, 100, 200)] * 3) == pytest.approx(0.5)
    assert cropping_shrank_images(0.5)
    assert cropping_shrank_images(0.75)
    assert not cropping_shrank_images(0.8)
    # The median case decides, not an outlier.
    after = [(100, 200, 200), (100, 200, 190), (10, 20, 20)]
    assert median_relative_size_after_cropping(before, after) == pytest.approx(0.95)
