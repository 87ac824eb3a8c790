"""Which intensity normalisation each input channel gets, from its name in ``dataset.json``.

nnU-Net's rules, which users of nnU-Net datasets expect:

* ``CT``: intensities are Hounsfield units, comparable across scans, so every case is clipped
  to the dataset's foreground 0.5/99.5 percentiles and z-scored with the dataset's foreground
  mean and standard deviation (``CTNormalization``).
* ``noNorm``: left as is. ``rescale_to_0_1``: per-image min/max to [0, 1].
* anything else (T1, T2, FLAIR, ADC, ...): intensities have no absolute meaning, so each image
  is z-scored on its own (``ZScoreNormalization``). When cropping to the non-zero region removed
  a large part of the typical image (skull-stripped brains, masked acquisitions), the
  statistics are taken inside the non-zero mask only, so that the zero background does not
  dominate them, and the background stays 0.

Channel names are matched without regard to case (``ct``, ``CT``, ``NoNorm`` all work).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from nnsam3d.schemas.fingerprint import IntensityStatistics
from nnsam3d.schemas.plans import ChannelNormalization

NONZERO_MASK_RELATIVE_SIZE = 0.75
"""Use the non-zero mask for z-scoring when cropping kept at most this share of the median image
volume (that is, removed at least 25% of it)."""

_SCHEME_BY_CHANNEL_NAME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "zscore": "ZScoreNormalization",
}

_SCHEMES_THAT_CAN_USE_NONZERO_MASK = ("ZScoreNormalization",)
"""CT statistics are the dataset's, and min/max rescaling has no notion of a mask."""


def normalization_scheme_for(channel_name: str) -> str:
    """Scheme name (one of ``plans.NORMALIZATION_SCHEMES``) for a channel name."""
    return _SCHEME_BY_CHANNEL_NAME.get(channel_name.strip().lower(), "ZScoreNormalization")


def median_relative_size_after_cropping(
    shapes_before_cropping: Sequence[Sequence[int]], shapes_after_cropping: Sequence[Sequence[int]]
) -> float:
    """Median over cases of (voxels after cropping to non-zero) / (voxels before)."""
    before = np.prod(np.asarray(shapes_before_cropping, dtype=float), axis=1)
    after = np.prod(np.asarray(shapes_after_cropping, dtype=float), axis=1)
    return float(np.median(after / before))


def cropping_shrank_images(relative_size_after_cropping: float) -> bool:
    """Whether cropping to non-zero removed at least 25% of the median image volume."""
    return relative_size_after_cropping <= NONZERO_MASK_RELATIVE_SIZE


def channel_normalizations(
    channel_names: Mapping[str, str],
    intensity_statistics: Mapping[str, IntensityStatistics],
    use_nonzero_mask: bool,
) -> list[ChannelNormalization]:
    """One :class:`ChannelNormalization` per channel, in channel order.

    ``channel_names``: channel index (as str) → name, as in ``dataset.json``.
    ``intensity_statistics``: channel index (as str) → foreground statistics from the
    fingerprint; needed for CT channels.
    ``use_nonzero_mask``: z-score inside the non-zero mask (see :func:`cropping_shrank_images`);
    applies to z-scored channels only.
    """
    result = []
    for index in sorted(channel_names, key=int):
        name = channel_names[index]
        scheme = normalization_scheme_for(name)
        normalization = ChannelNormalization(
            channel=int(index),
            modality=name,
            scheme=scheme,
            use_nonzero_mask=use_nonzero_mask and scheme in _SCHEMES_THAT_CAN_USE_NONZERO_MASK,
        )
        if scheme == "CTNormalization":
            if index not in intensity_statistics:
                raise ValueError(
                    f"channel {index} ('{name}') is CT but the dataset fingerprint has no foreground "
                    f"intensity statistics for it. Rerun nnsam3d_plan_and_preprocess with --clean."
                )
            statistics = intensity_statistics[index]
            normalization.mean = float(statistics.mean)
            normalization.std = float(statistics.std)
            normalization.lower_bound = float(statistics.percentile_00_5)
            normalization.upper_bound = float(statistics.percentile_99_5)
        result.append(normalization)
    return result
