"""Target spacing and the median image shape at that spacing.

Every case is resampled to one target spacing so that a voxel means the same size in mm
everywhere. Like nnU-Net we take the median spacing per axis, except for strongly anisotropic
data: there the median of the coarse axis would resample the many thin-slice cases of the
dataset down to thick slices, and interpolating across the few slices of the thick-slice cases
up to it invents structures. nnU-Net's answer, followed here: when one axis is much coarser
(more than 3x the finest) *and* has much fewer voxels (3x fewer than the others), use the 10th
percentile of that axis's spacings, keeping it coarser than the in-plane spacing.

All spacings are in mm and all shapes in voxels, in canonical (z, y, x) order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nnsam3d.preprocessing.resampling import ANISOTROPY_THRESHOLD, compute_new_shape

COARSE_AXIS_PERCENTILE = 10
"""Percentile of the coarse axis's spacings used as its target for strongly anisotropic data."""

_KEEP_COARSER_MARGIN_MM = 1e-5
"""Added to the in-plane spacing when the percentile would make the coarse axis finer than it."""


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Median voxel size (mm) per axis over the cases."""
    return tuple(float(v) for v in np.median(np.asarray(spacings, dtype=float), axis=0))


def coarse_axis_needing_finer_target(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> int | None:
    """The axis whose target spacing should not be the median, or None.

    That is the axis with the coarsest median spacing when its median spacing is more than
    ``threshold`` times the finest median spacing and its median size (voxels, ``shapes``
    after cropping, at the original spacing) is less than the smallest other median size
    divided by ``threshold``: few thick slices.
    """
    median = np.asarray(median_spacing(spacings))
    median_size = np.median(np.asarray(shapes, dtype=float), axis=0)
    coarse = int(np.argmax(median))
    others = [axis for axis in range(len(median)) if axis != coarse]
    has_anisotropic_spacing = median[coarse] > threshold * median.min()
    has_few_voxels = median_size[coarse] * threshold < min(median_size[axis] for axis in others)
    return coarse if has_anisotropic_spacing and has_few_voxels else None


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> tuple[float, float, float]:
    """Spacing (mm, z, y, x) every case is resampled to.

    ``spacings``: per case, mm. ``shapes``: per case, voxels after cropping (original spacing).
    The median per axis, except for the coarse axis of strongly anisotropic data (see
    :func:`coarse_axis_needing_finer_target`), which takes the 10th percentile of its spacings,
    kept just above the coarsest other axis so that it stays the coarse axis.
    """
    return target_spacing_and_coarse_axis(spacings, shapes, threshold)[0]


def target_spacing_and_coarse_axis(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> tuple[tuple[float, float, float], int | None]:
    """:func:`target_spacing` and the axis that did not take the median
    (:func:`coarse_axis_needing_finer_target`), for a planner that explains the choice."""
    target = list(median_spacing(spacings))
    coarse = coarse_axis_needing_finer_target(spacings, shapes, threshold)
    if coarse is not None:
        coarse_spacings = np.asarray(spacings, dtype=float)[:, coarse]
        coarse_target = float(np.percentile(coarse_spacings, COARSE_AXIS_PERCENTILE))
        in_plane = max(target[axis] for axis in range(len(target)) if axis != coarse)
        if coarse_target < in_plane:
            coarse_target = in_plane + _KEEP_COARSER_MARGIN_MM
        target[coarse] = coarse_target
    return tuple(float(v) for v in target), coarse


def median_shape_at_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    spacing: Sequence[float],
) -> tuple[int, int, int]:
    """Median per axis (voxels) of the case shapes once resampled to ``spacing`` (mm).

    ``shapes`` are per case at the case's own spacing (``spacings``), e.g. after cropping.
    """
    resampled = [compute_new_shape(shape, case_spacing, spacing) for shape, case_spacing in zip(shapes, spacings)]
    return tuple(int(round(v)) for v in np.median(np.asarray(resampled, dtype=float), axis=0))
