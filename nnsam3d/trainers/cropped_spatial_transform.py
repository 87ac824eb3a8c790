"""The training's spatial transform (rotation, scaling, optional elastic deformation),
interpolating only the part of the read block that the drawn sampling grid covers.

batchgenerators' ``SpatialTransform`` spline-filters every channel of the whole block the loader
read: for the 24 GiB vit_b plan of a CT, 124 slices of 762 x 762 for a 384 x 384 patch, read that
large so that any rotation up to 180 degrees with a zoom up to 1.4 fits, although one draw samples
a smaller region. This transform makes the same random draws in the same order, so a seeded run
augments the same way, and interpolates each channel from the region the grid covers, widened by
``SPLINE_MARGIN`` voxels. The cubic spline's prefilter is a recursive filter whose memory of an
edge decays by 2 - sqrt(3) (about 0.27) per voxel: 24 voxels from the region's edge, what the
cut changes is below 1e-13 of the intensities. Where the region reaches the block's edge it is
the block's edge, and there nothing changes at all. Labels are sampled nearest-neighbour.
A grid that is only scaled (a fifth of the draws) is separable and is sampled as one matrix
product per axis (see :func:`interpolate`).
"""

from __future__ import annotations

import numpy as np
from batchgenerators.augmentations.utils import (
    create_zero_centered_coordinate_mesh,
    elastic_deform_coordinates,
    rotate_coords_2d,
    rotate_coords_3d,
    scale_coords,
)
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage, sparse

from nnsam3d.preprocessing.axis_matrices import apply_along_axes, matrix_of

SPLINE_MARGIN = 24
"""Voxels kept beyond the spline's taps around the sampling grid (see the module docstring)."""

DATA_ORDER = 3
SEG_ORDER = 0


class CroppedSpatialTransform(AbstractTransform):
    """Rotation, scaling and elastic deformation of blocks (C, *block_size) into patches
    (C, *patch_size), the patch centred in the block; samples outside the block are 0 (cubic
    spline for images, nearest neighbour for labels).

    ``thin_axis``: the axis kept out of the transform (in-plane augmentation: every slice along
    it rotated and scaled alike, never interpolated across); its block and patch sizes agree.
    Draws as batchgenerators' ``SpatialTransform`` with ``random_crop=False``,
    ``p_rot_per_axis=1`` and one scale for all axes draws, on the thin axis folded into the
    channels (``FoldAxisIntoChannels``) where there is one.

    Called on a batch of blocks in memory, it is a transform; the data loader instead calls
    :meth:`augment_sample` with a reader, so that only the covered region is ever read.
    """

    def __init__(self, patch_size, block_size, thin_axis: int | None = None, angle_x=(0.0, 0.0),
                 angle_y=(0.0, 0.0), angle_z=(0.0, 0.0), scale=(1.0, 1.0), elastic: bool = False,
                 alpha=(0.0, 200.0), sigma=(9.0, 13.0), p_el_per_sample: float = 0.2,
                 p_rot_per_sample: float = 0.2, p_scale_per_sample: float = 0.2):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.block_size = tuple(int(b) for b in block_size)
        if any(b < p for b, p in zip(self.block_size, self.patch_size)) or (
                thin_axis is not None and self.block_size[thin_axis] != self.patch_size[thin_axis]):
            raise ValueError(f"block {self.block_size} does not hold patch {self.patch_size} "
                             f"(thin axis {thin_axis} must match)")
        self.thin_axis = thin_axis
        self.spatial_axes = tuple(a for a in range(3) if a != thin_axis)
        self.angle_x, self.angle_y, self.angle_z = angle_x, angle_y, angle_z
        self.scale = scale
        self.elastic, self.alpha, self.sigma = elastic, alpha, sigma
        self.p_el_per_sample = p_el_per_sample
        self.p_rot_per_sample = p_rot_per_sample
        self.p_scale_per_sample = p_scale_per_sample

    def __call__(self, **batch):
        data, seg = batch["data"], batch.get("seg")
        data_out = np.zeros((*data.shape[:2], *self.patch_size), dtype=np.float32)
        seg_out = None if seg is None else np.zeros((*seg.shape[:2], *self.patch_size), dtype=np.float32)
        for b in range(len(data)):
            def read_region(low, high, b=b):
                region = (slice(None), *(slice(int(a), int(z)) for a, z in zip(low, high)))
                return data[b][region], None if seg is None else seg[b][region]

            self.augment_sample(read_region, data_out[b], None if seg is None else seg_out[b])
        batch["data"] = data_out
        if seg is not None:
            batch["seg"] = seg_out
        return batch

    def augment_sample(self, read_region, data_out: np.ndarray, seg_out: np.ndarray | None) -> None:
        """Draws one sample's transform and writes its patch into ``data_out`` (C, *patch) and
        ``seg_out``. ``read_region(low, high)``: the block's voxels [low, high) per axis (data,
        seg), the block being (C, *block_size); called once, for the region the draw needs."""
        grid = self.draw_sampling_grid()
        if grid is None:
            low = np.array([(b - p) // 2 for b, p in zip(self.block_size, self.patch_size)])
            data, seg = read_region(low, low + np.array(self.patch_size))
            data_out[...] = data
            if seg_out is not None:
                seg_out[...] = seg
            return
        plane = [self.block_size[a] for a in self.spatial_axes]
        for index, size in enumerate(plane):
            grid[index] += size / 2.0 - 0.5
        low2, high2 = covered_region(grid, plane, DATA_ORDER)  # holds the labels' taps too
        if np.any(high2 <= low2):  # the grid lies wholly outside the block
            data_out[...] = 0
            if seg_out is not None:
                seg_out[...] = 0
            return
        low, high = np.zeros(3, dtype=np.int64), np.array(self.block_size, dtype=np.int64)
        low[list(self.spatial_axes)], high[list(self.spatial_axes)] = low2, high2
        data, seg = read_region(low, high)
        # Integer shifts: exact in floating point, so weights and nearest voxels are unchanged.
        local = grid - low2.reshape(-1, *([1] * (grid.ndim - 1)))
        interpolate(data, local, DATA_ORDER, data_out, self.thin_axis)
        if seg_out is not None:
            interpolate(seg, local, SEG_ORDER, seg_out, self.thin_axis)

    def draw_sampling_grid(self) -> np.ndarray | None:
        """The patch's sampling grid around the origin (over the spatial axes), or None when no
        spatial change was drawn.

        The order and number of ``np.random`` calls are batchgenerators' ``augment_spatial``'s,
        an unused draw included (``p_rot_per_axis`` is 1, yet each axis draws against it).
        """
        shape = [self.patch_size[a] for a in self.spatial_axes]
        dim = len(shape)
        coords = create_zero_centered_coordinate_mesh(shape)
        modified = False
        if self.elastic and np.random.uniform() < self.p_el_per_sample:
            alpha = np.random.uniform(*self.alpha)
            sigma = np.random.uniform(*self.sigma)
            coords = elastic_deform_coordinates(coords, alpha, sigma)
            modified = True
        if np.random.uniform() < self.p_rot_per_sample:
            angles = []
            for limits in (self.angle_x, self.angle_y, self.angle_z)[: 1 if dim == 2 else 3]:
                np.random.uniform()  # batchgenerators' per-axis draw, against a probability of 1
                angles.append(np.random.uniform(*limits))
            coords = rotate_coords_2d(coords, *angles) if dim == 2 else rotate_coords_3d(coords, *angles)
            modified = True
        if np.random.uniform() < self.p_scale_per_sample:
            low, high = self.scale
            if np.random.random() < 0.5 and low < 1:
                factor = np.random.uniform(low, 1)
            else:
                factor = np.random.uniform(max(low, 1), high)
            coords = scale_coords(coords, factor)
            modified = True
        return coords if modified else None


def covered_region(coords: np.ndarray, shape, order: int) -> tuple[np.ndarray, np.ndarray]:
    """[low, high) per axis of ``shape``: the voxels a spline of ``order`` reads at ``coords``
    (dim, *grid), widened by ``SPLINE_MARGIN`` where a prefilter runs, clipped to the block."""
    reach = order // 2 + 1 + (SPLINE_MARGIN if order > 1 else 0)
    flat = coords.reshape(len(shape), -1)
    low = np.floor(flat.min(axis=1)).astype(np.int64) - reach
    high = np.floor(flat.max(axis=1)).astype(np.int64) + reach + 1
    limit = np.asarray(shape, dtype=np.int64)
    return np.clip(low, 0, limit), np.clip(high, 0, limit)


def _images(array: np.ndarray, thin_axis: int | None):
    """The images (C, *3D) holds for the interpolation: its channels, or every slice of every
    channel along ``thin_axis`` (views, in the same order for a region and for a patch)."""
    for channel in array:
        if thin_axis is None:
            yield channel
        else:
            for index in range(channel.shape[thin_axis]):
                yield channel[(slice(None),) * thin_axis + (index,)]


def axis_positions(coords: np.ndarray) -> list[np.ndarray] | None:
    """Per axis, the positions a grid (dim, *grid) samples, where it is their tensor product (no
    rotation, no deformation: only scaled), else None."""
    dim = len(coords)
    positions = []
    for axis in range(dim):
        line = coords[axis][tuple(slice(None) if a == axis else 0 for a in range(dim))]
        along = [1] * dim
        along[axis] = -1
        if not np.array_equal(coords[axis], np.broadcast_to(line.reshape(along), coords[axis].shape)):
            return None
        positions.append(line)
    return positions


def _axis_matrix(size: int, positions: np.ndarray, order: int, prefilter: bool):
    """(positions, size): ``map_coordinates`` along one axis, with its boundary ("constant": 0
    outside). With ``prefilter`` the whole 1-D spline, a dense matrix; without, the spline's 4
    taps on prefiltered coefficients, a sparse one."""
    matrix = matrix_of(lambda unit: ndimage.map_coordinates(unit, positions[None], order=order, mode="constant",
                                                            cval=0.0, prefilter=prefilter), size)
    return matrix if prefilter else sparse.csr_array(matrix)


def interpolate(region: np.ndarray, coords: np.ndarray, order: int, out: np.ndarray, thin_axis: int | None) -> None:
    """``out`` (C, *patch) = ``region`` (C, *region) sampled at ``coords`` (region voxels), 0
    outside: ``scipy.ndimage.map_coordinates`` with mode "constant", the prefilter as it runs it.

    A grid that is only scaled is separable: the spline runs as one matrix product per axis
    (``axis_matrices``), equal to ``map_coordinates`` to rounding and about twice as fast. Slices
    (in-plane) are prefiltered as ``map_coordinates`` does, then take the spline's taps as sparse
    products; volumes take the prefilter folded into dense matrices (a sparse product over a
    whole volume waits on memory: slower than ``map_coordinates`` there)."""
    positions = axis_positions(coords) if order > 1 else None
    if positions is not None:
        image_shape = [n for axis, n in enumerate(region.shape[1:]) if axis != thin_axis]
        volume = len(image_shape) == 3
        matrices = {axis: _axis_matrix(n, p, order, prefilter=volume)
                    for axis, (n, p) in enumerate(zip(image_shape, positions))}
    for image, target in zip(_images(region, thin_axis), _images(out, thin_axis)):
        if positions is not None:
            coefficients = (image.astype(np.float64) if volume
                            else ndimage.spline_filter(image, order, output=np.float64, mode="constant"))
            target[...] = apply_along_axes(coefficients, matrices)
            continue
        if order > 1:
            coefficients = ndimage.spline_filter(image, order, output=np.float64, mode="constant")
            ndimage.map_coordinates(coefficients, coords, output=target, order=order, mode="constant", cval=0.0,
                                    prefilter=False)
        else:
            ndimage.map_coordinates(image, coords, output=target, order=order, mode="constant", cval=0.0)
