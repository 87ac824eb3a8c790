"""Cropping to the non-zero region (the body in MRI, the scanned field in CT with padding)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BoundingBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def nonzero_bounding_box(data: np.ndarray) -> BoundingBox:
    """Half-open box ((z0, z1), (y0, y1), (x0, x1)) around voxels non-zero in any channel.

    ``data`` is (C, z, y, x). Holes in the mask are filled (as nnU-Net does) so that dark
    structures inside the body do not change the box. An all-zero image keeps its full extent.
    """
    mask = np.any(data != 0, axis=0)
    if not mask.any():
        return tuple((0, int(n)) for n in data.shape[1:])
    mask = ndimage.binary_fill_holes(mask)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def crop_to_box(array: np.ndarray, box: BoundingBox) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``box``."""
    slices = tuple(slice(lo, hi) for lo, hi in box)
    return array[(Ellipsis, *slices)]


def paste_into_box(cropped: np.ndarray, box: BoundingBox, full_shape: tuple[int, int, int], fill=0) -> np.ndarray:
    """Inverse of :func:`crop_to_box`: place ``cropped`` (..., z, y, x) into a full-size array."""
    leading = cropped.shape[:-3]
    full = np.full((*leading, *full_shape), fill, dtype=cropped.dtype)
    slices = tuple(slice(lo, hi) for lo, hi in box)
    full[(Ellipsis, *slices)] = cropped
    return full
