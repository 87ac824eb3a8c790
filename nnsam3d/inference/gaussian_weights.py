"""Gaussian importance weights for blending overlapping sliding windows.

A network sees less context near the border of its window, so its predictions there are less
reliable than in the centre. Each window's prediction is therefore weighted with a Gaussian
centred on the window (nnU-Net's choice, sigma = 1/8 of the window per axis) before the
overlapping windows are averaged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

SIGMA_SCALE = 1.0 / 8.0
"""Standard deviation of the Gaussian as a fraction of the window size along each axis."""

MIN_WEIGHT = 1e-3
"""Floor of the weights (the centre weighs 1). A voxel at the corner of a window would weigh
exp(-24) without it, which vanishes in a float16 accumulator; a voxel covered only by window
borders (the image's corners) would then divide zero by zero. The floor changes nothing where a
window centre is near, because there the centre's weight dominates."""


@lru_cache(maxsize=8)
def _cached_importance_map(patch_size: tuple[int, int, int]) -> np.ndarray:
    profiles = []
    for size in patch_size:
        # Centre between the two middle voxels for even sizes, so that the map is symmetric and
        # a mirrored window gets the same weights as the original.
        centre = (size - 1) / 2.0
        sigma = max(size * SIGMA_SCALE, 1e-6)
        positions = np.arange(size, dtype=np.float64)
        profiles.append(np.exp(-0.5 * ((positions - centre) / sigma) ** 2))
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    weights /= weights.max()
    weights = np.maximum(weights, MIN_WEIGHT).astype(np.float32)
    weights.flags.writeable = False  # shared by every caller through the cache
    return weights


def gaussian_importance_map(patch_size: Sequence[int]) -> np.ndarray:
    """Weights (z, y, x) float32 for a window of ``patch_size`` voxels.

    The Gaussian (``SIGMA_SCALE``) is separable, has its maximum 1 at the window centre, is
    symmetric under mirroring along every axis, and is floored at ``MIN_WEIGHT`` so that every
    voxel of a window has a positive weight. The returned array is read-only (it is cached).
    """
    patch_size = tuple(int(v) for v in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ValueError(f"patch_size must be three positive sizes (z, y, x), got {patch_size}")
    return _cached_importance_map(patch_size)
