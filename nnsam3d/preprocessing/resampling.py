"""Resampling images, label maps and class scores between voxel grids.

Images are resampled with cubic B-splines (order 3). For strongly anisotropic data (one
axis's spacing more than 3x the others, nnU-Net's rule) the coarse axis is handled
separately: cubic in-plane, nearest neighbour across slices, because interpolating across
thick slices invents structures.

Label maps and class scores are never interpolated as numbers. Each class is resampled as
its own soft mask (linear; nearest across a coarse axis) and every voxel takes the class with
the highest value, so classes never mix and thin structures survive better than with plain
nearest-neighbour resampling. Classes are streamed one at a time so that memory stays at two
volumes whatever the number of classes. Class scores (the export's work, K classes of the
whole case) go through PyTorch's interpolation (:mod:`score_resampling`, 10x faster, and on a
GPU where the scores are); scipy's zoom here is its reference (``resample_score_channel``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

# The rule lives with the plans, which derive their anisotropic axis from it; resampling applies
# it per case, and the planner's spacing rules and the augmentation import the threshold from here.
from nnsam3d.schemas.plans import ANISOTROPY_THRESHOLD, anisotropic_axis  # noqa: F401
from nnsam3d.preprocessing.device_resampling import resample_volume_on
from nnsam3d.preprocessing.score_resampling import host_tensor, scores_to_labels


def compute_new_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Voxel shape covering the same extent at ``target_spacing`` (at least 1 voxel per axis)."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing)
    )


def separate_axis_for(spacing_from: Sequence[float], spacing_to: Sequence[float]) -> int | None:
    """Axis to resample separately when going from one spacing to another (either may be anisotropic)."""
    axis = anisotropic_axis(spacing_from)
    return axis if axis is not None else anisotropic_axis(spacing_to)


def _zoom_volume(volume: np.ndarray, new_shape: Sequence[int], order: int, separate_axis: int | None) -> np.ndarray:
    """Resample one 3D volume to ``new_shape``; ``separate_axis`` is resampled with order 0."""
    old_shape = volume.shape
    if tuple(old_shape) == tuple(new_shape):
        return volume
    factors = [n / o for n, o in zip(new_shape, old_shape)]
    if separate_axis is None or order == 0:
        return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    in_plane = [f for axis, f in enumerate(factors) if axis != separate_axis]
    if any(f != 1.0 for f in in_plane):
        # Slice by slice in 2D: the same values as a 3D zoom with factor 1 across slices (which
        # lands on the spline's knots there), at a quarter of the cost (16 taps instead of 64).
        slices = np.moveaxis(volume, separate_axis, 0)
        zoomed = np.stack(
            [
                ndimage.zoom(s, in_plane, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
                for s in slices
            ]
        )
        volume = np.moveaxis(zoomed, 0, separate_axis)
    across = [1.0, 1.0, 1.0]
    across[separate_axis] = factors[separate_axis]
    if across[separate_axis] != 1.0:
        volume = ndimage.zoom(volume, across, order=0, mode="nearest", grid_mode=True)
    return volume


def resample_image(
    data: np.ndarray,
    new_shape: Sequence[int],
    separate_axis: int | None = None,
    order: int = 3,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Resample a (C, z, y, x) image to spatial ``new_shape``; float32 out (on the host).

    device: a GPU to resample on (``device_resampling``: the same zoom as matrix products);
    None or a CPU: scipy's zoom.
    """
    if tuple(data.shape[1:]) == tuple(new_shape):
        return data.astype(np.float32, copy=False)
    if device is not None and torch.device(device).type != "cpu":
        return np.stack([resample_volume_on(device, channel, new_shape, separate_axis, order) for channel in data])
    return np.stack(
        [_zoom_volume(channel.astype(np.float32, copy=False), new_shape, order, separate_axis) for channel in data]
    ).astype(np.float32, copy=False)


def _argmax_over_streamed_classes(
    class_scores: Callable[[int], np.ndarray], num_classes: int, new_shape: Sequence[int], separate_axis: int | None
) -> np.ndarray:
    best_score = np.full(tuple(new_shape), -np.inf, dtype=np.float32)
    labels = np.zeros(tuple(new_shape), dtype=np.int16)
    for k in range(num_classes):
        resampled = resample_score_channel(class_scores(k), new_shape, separate_axis)
        better = resampled > best_score
        best_score[better] = resampled[better]
        labels[better] = k
    return labels


def resample_label_map(
    segmentation: np.ndarray,
    new_shape: Sequence[int],
    separate_axis: int | None = None,
) -> np.ndarray:
    """Resample an integer label map (z, y, x) to ``new_shape`` without mixing classes; int16 out.

    The classes competing for each voxel are the values present in ``segmentation``.
    """
    if tuple(segmentation.shape) == tuple(new_shape):
        return segmentation.astype(np.int16, copy=False)
    values = [int(v) for v in np.unique(segmentation)]
    if not values:
        return np.zeros(tuple(new_shape), dtype=np.int16)
    winners = _argmax_over_streamed_classes(
        lambda k: (segmentation == values[k]).astype(np.float32), len(values), new_shape, separate_axis
    )
    return np.asarray(values, dtype=np.int16)[winners]


def resample_scores_to_label_map(
    scores: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None
) -> np.ndarray:
    """Class scores (K, z, y, x), probabilities or logits → label map at ``new_shape`` (int16).

    Equivalent to resampling every class channel and taking the argmax (ties to the lower class),
    but one class at a time, also when no resampling is needed: ``np.argmax`` over the class axis
    would first copy the whole score volume into class-last order. PyTorch's interpolation on
    the CPU (``score_resampling.scores_to_labels``; equal to ``resample_score_channel`` to 1e-5).
    """
    return scores_to_labels(host_tensor(scores), new_shape, separate_axis).numpy()


def reference_scores_to_label_map(
    scores: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None
) -> np.ndarray:
    """:func:`resample_scores_to_label_map` with scipy's zoom class by class (what the export ran
    before PyTorch's interpolation): the reference of ``benchmarks/export_speed.py``."""
    return _argmax_over_streamed_classes(lambda k: scores[k], scores.shape[0], new_shape, separate_axis)


def resample_score_channel(
    channel: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None
) -> np.ndarray:
    """One class's scores (z, y, x) → ``new_shape`` float32 (linear; nearest across a coarse axis):
    scipy's zoom, the reference of ``score_resampling`` (and what label maps are resampled with,
    as one-hot masks, where equal weights tie exactly)."""
    return _zoom_volume(channel.astype(np.float32, copy=False), new_shape, 1, separate_axis)


def resample_scores(scores: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None) -> np.ndarray:
    """Class scores (K, z, y, x) → (K, *new_shape) float32 (linear; nearest across a coarse axis),
    all at once with scipy: the reference of the streamed, class-by-class functions."""
    if tuple(scores.shape[1:]) == tuple(new_shape):
        return scores.astype(np.float32, copy=False)
    return np.stack([resample_score_channel(s, new_shape, separate_axis) for s in scores])
