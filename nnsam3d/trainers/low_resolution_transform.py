"""Simulated low resolution (nearest-neighbour down, cubic spline up), one axis at a time.

batchgenerators' ``SimulateLowResolutionTransform`` resizes with scikit-image, which zooms with
``scipy.ndimage.zoom`` over all axes at once: a cubic spline in 3D reads 64 voxels per output
voxel, and interpolates along the ignored axis too (at whole voxels, where it gives the voxel
back). For the 24 GiB vit_b plan's patch (124 x 384 x 384) one channel took 5 s of a worker's
CPU. Both zooms are separable and linear along each axis, so this transform applies them as
one axis at a time: down by picking the voxels ``ndimage.zoom`` picks, up by a matrix per axis
whose columns are ``ndimage.zoom`` of the unit vectors (its spline, boundary and grid, by
construction), the three-axis spline becoming three matrix products. scikit-image then clips to
the input's range; so does this. Same draws as batchgenerators; values equal to 1e-12.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.augmentations.utils import uniform
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from nnsam3d.preprocessing.axis_matrices import apply_along_axes, nearest_indices, zoom_matrix


def zoom_nearest(volume: np.ndarray, shape) -> np.ndarray:
    out = volume
    for axis, size in enumerate(shape):
        if out.shape[axis] != size:
            out = np.take(out, nearest_indices(out.shape[axis], int(size)), axis=axis)
    return out


def zoom_cubic(volume: np.ndarray, shape) -> np.ndarray:
    """float64 ``volume`` zoomed to ``shape`` by the cubic spline, clipped to its range."""
    matrices = {axis: zoom_matrix(size_in, int(size_out), order=3)
                for axis, (size_in, size_out) in enumerate(zip(volume.shape, shape)) if size_in != size_out}
    out = apply_along_axes(volume, matrices) if matrices else volume.copy()
    return np.clip(out, volume.min(), volume.max(), out=out)


class SeparableLowResolutionTransform(AbstractTransform):
    """Each sample with ``p_per_sample``, each of its channels with ``p_per_channel``: zoomed
    by a factor drawn from ``zoom_range`` (the ``ignore_axes`` kept), nearest-neighbour, and back
    to its shape by the cubic spline. batchgenerators' ``SimulateLowResolutionTransform`` with
    ``per_channel=True``, ``order_downsample=0``, ``order_upsample=3``."""

    def __init__(self, zoom_range=(0.5, 1.0), p_per_channel: float = 0.5, p_per_sample: float = 0.25,
                 ignore_axes=None):
        self.zoom_range = zoom_range
        self.p_per_channel = p_per_channel
        self.p_per_sample = p_per_sample
        self.ignore_axes = tuple(ignore_axes or ())

    def __call__(self, **batch):
        data = batch["data"]
        for sample in data:
            if np.random.uniform() < self.p_per_sample:
                self._augment(sample)
        return batch

    def _augment(self, sample: np.ndarray) -> None:
        shape = np.array(sample.shape[1:])
        for channel in range(sample.shape[0]):
            if np.random.uniform() >= self.p_per_channel:
                continue
            zoom = uniform(*self.zoom_range)
            target = np.maximum(1, np.round(shape * zoom).astype(int))
            for axis in self.ignore_axes:
                target[axis] = shape[axis]
            low = zoom_nearest(sample[channel].astype(np.float64), target)
            sample[channel] = zoom_cubic(low, shape)
