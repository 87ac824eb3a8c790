"""Linear resampling along one axis at a time, as matrices.

A spline zoom, or a spline sampled on an axis-aligned grid, is linear along each axis and
separable: the N-D operation is one matrix product per axis. Each matrix is scipy's own 1-D
operation applied to the unit vectors, so it carries scipy's spline, boundary handling and grid
exactly; the products run on BLAS instead of reading 4^N voxels per output voxel. Where the
spline's prefilter runs separately (a recursive filter, cheaper than a dense matrix), what is left
per axis is the spline's 4 taps per output voxel: a sparse matrix.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import numpy as np
from scipy import ndimage, sparse

ZOOM_MODE = "nearest"
"""Edges of every zoom here: ``ndimage.zoom``'s "nearest" on the grid of voxel centres
(``grid_mode``), as the preprocessing resamples and as scikit-image's resize(mode="edge")."""


def matrix_of(operation: Callable[[np.ndarray], np.ndarray], size_in: int) -> np.ndarray:
    """(size_out, size_in): the linear ``operation`` on vectors of ``size_in`` as a matrix."""
    return np.stack([operation(unit) for unit in np.eye(size_in)], axis=1)


def apply_along_axes(array: np.ndarray, matrices: Mapping[int, np.ndarray | sparse.sparray]) -> np.ndarray:
    """``array`` with ``matrices[axis]`` (size_out, size_in) applied along each of its axes; the
    last axis first (one matrix product, no copy), the others through a batched product. A sparse
    matrix (a spline's taps: 4 per row) multiplies the axis brought to the front instead."""
    out = array
    for axis in sorted(matrices, reverse=True):
        matrix = matrices[axis]
        if sparse.issparse(matrix):
            front = np.moveaxis(out, axis, 0)
            product = matrix @ front.reshape(front.shape[0], -1)
            out = np.moveaxis(product.reshape(matrix.shape[0], *front.shape[1:]), 0, axis)
        elif axis == out.ndim - 1:
            out = out @ matrix.T
        else:
            out = np.moveaxis(np.matmul(matrix, np.moveaxis(out, axis, -2)), -2, axis)
    return out


@functools.lru_cache(maxsize=256)
def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """The input voxel ``ndimage.zoom(order=0)`` picks for each output voxel of one axis."""
    ramp = np.arange(size_in, dtype=np.float64)
    picked = ndimage.zoom(ramp, size_out / size_in, order=0, mode=ZOOM_MODE, grid_mode=True)
    assert picked.shape == (size_out,), (size_in, size_out, picked.shape)
    indices = picked.astype(np.int64)
    indices.setflags(write=False)  # shared through the cache
    return indices


@functools.lru_cache(maxsize=32)  # up to 2 MB each (512 x 512 float64)
def zoom_matrix(size_in: int, size_out: int, order: int = 3) -> np.ndarray:
    """(size_out, size_in): ``ndimage.zoom`` of one axis (spline ``order``, prefiltered as zoom
    does by default) as a matrix."""
    matrix = matrix_of(lambda unit: ndimage.zoom(unit, size_out / size_in, order=order, mode=ZOOM_MODE,
                                                 grid_mode=True), size_in)
    assert matrix.shape == (size_out, size_in), (size_in, size_out, matrix.shape)
    matrix.setflags(write=False)
    return matrix
