"""Linear resampling along one axis at a time, as matrices.

A spline zoom, or a spline sampled on an axis-aligned grid, is linear along each axis and
separable: the N-D operation is one matrix product per axis. Each matrix is scipy's own 1-D
operation applied to the unit vectors, so it carries scipy's spline, boundary handling and grid
exactly; the products run on BLAS instead of reading 4^N voxels per output voxel. Where the
spline's prefilter runs separately (a recursive filter, cheaper than a dense matrix), what is left
per axis is the spline's 4 taps per output voxel: a sparse matrix.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from scipy import sparse


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
