"""Cropping to the non-zero region (the body in MRI, the scanned field in CT with padding)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BoundingBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: voxels non-zero in any channel of ``data`` (C, z, y, x), holes filled.

    Holes are filled (as nnU-Net does) so that dark structures inside the body, which are
    zero in masked or skull-stripped images, still count as inside for z-scoring.
    """
    return ndimage.binary_fill_holes(np.any(data != 0, axis=0))


def bounding_box_of_mask(mask: np.ndarray) -> BoundingBox:
    """Half-open box ((z0, z1), (y0, y1), (x0, x1)) around the true voxels of a (z, y, x) mask.

    An empty mask gives the full extent.
    """
    if not mask.any():
        return tuple((0, int(n)) for n in mask.shape)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def nonzero_bounding_box(data: np.ndarray) -> BoundingBox:
    """Half-open box ((z0, z1), (y0, y1), (x0, x1)) around voxels non-zero in any channel.

    ``data`` is (C, z, y, x). An all-zero image keeps its full extent. The box is that of the
    hole-filled :func:`nonzero_mask` too: a hole is enclosed by non-zero voxels, so filling it
    cannot grow the box, and the (slow) filling is skipped here.
    """
    return bounding_box_of_mask(np.any(data != 0, axis=0))


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
