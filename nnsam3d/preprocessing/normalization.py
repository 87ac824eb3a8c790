"""Intensity normalisation of each input channel, as the plans say (``ChannelNormalization``).

The schemes and when the planner picks them are described in ``schemas.plans`` and
``planners.normalization_rules``; this module only applies them. Channels are normalised in
place (float32) to keep memory at one copy of the image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nnsam3d.schemas.plans import ChannelNormalization

_MIN_STD = 1e-8
"""A constant image (std 0) is shifted to 0 rather than divided by zero."""


def _require(normalization: ChannelNormalization, *names: str) -> list[float]:
    values = [getattr(normalization, name) for name in names]
    missing = [name for name, value in zip(names, values) if value is None]
    if missing:
        raise ValueError(
            f"plans: channel {normalization.channel} ({normalization.modality}) uses {normalization.scheme} "
            f"but has no {', '.join(missing)}; rerun nnsam3d_plan_and_preprocess with --clean."
        )
    return [float(v) for v in values]


def _z_score(values: np.ndarray) -> None:
    """(values - mean) / std in place; statistics in float64 for accuracy on large volumes."""
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    values -= mean
    values /= max(std, _MIN_STD)


def normalize_channel(
    channel: np.ndarray, normalization: ChannelNormalization, nonzero_mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise one channel (z, y, x) float32 in place and return it.

    nonzero_mask: (z, y, x) bool, needed for ``ZScoreNormalization`` with ``use_nonzero_mask``:
    statistics come from inside the mask and only those voxels change (outside they are 0 by
    definition of the mask, and stay 0).
    """
    scheme = normalization.scheme
    if scheme == "CTNormalization":
        lower, upper, mean, std = _require(normalization, "lower_bound", "upper_bound", "mean", "std")
        np.clip(channel, lower, upper, out=channel)
        channel -= mean
        channel /= max(std, _MIN_STD)
    elif scheme == "ZScoreNormalization":
        if normalization.use_nonzero_mask:
            if nonzero_mask is None:
                raise ValueError(f"channel {normalization.channel}: z-scoring inside the non-zero mask needs the mask")
            if nonzero_mask.any():
                inside = channel[nonzero_mask]
                _z_score(inside)
                channel[nonzero_mask] = inside
        else:
            _z_score(channel)
    elif scheme == "RescaleTo01Normalization":
        low, high = float(channel.min()), float(channel.max())
        channel -= low
        channel /= max(high - low, _MIN_STD)
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalisation scheme '{scheme}'")
    return channel


def needs_nonzero_mask(normalizations: Sequence[ChannelNormalization]) -> bool:
    """Whether :func:`normalize_image` will need the non-zero mask (so that it is built only then)."""
    return any(n.scheme == "ZScoreNormalization" and n.use_nonzero_mask for n in normalizations)


def normalize_image(
    images: np.ndarray, normalizations: Sequence[ChannelNormalization], nonzero_mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise every channel of a (C, z, y, x) image; float32 out, in place when already float32.

    ``normalizations`` holds one entry per channel (``plans.normalization``), matched by
    ``ChannelNormalization.channel``.
    """
    by_channel = {n.channel: n for n in normalizations}
    if sorted(by_channel) != list(range(images.shape[0])):
        raise ValueError(
            f"the plans normalise channels {sorted(by_channel)} but the image has {images.shape[0]} channel(s); "
            f"these plans belong to another dataset or were made for other inputs."
        )
    images = images.astype(np.float32, copy=False)
    for index in range(images.shape[0]):
        normalize_channel(images[index], by_channel[index], nonzero_mask)
    return images
