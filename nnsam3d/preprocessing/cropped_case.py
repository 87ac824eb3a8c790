"""The first step shared by the fingerprint and preprocessing: read a case and crop it to non-zero.

Both stages must see exactly the same cropped case (the planner's median shape and intensity
statistics describe what the preprocessor will produce), so this is the one place that does it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnsam3d.io.geometry import ImageGeometry, ImageReadError
from nnsam3d.io.image_io import ImageIO, read_channels, read_segmentation
from nnsam3d.preprocessing.cropping import BoundingBox, crop_to_box, nonzero_bounding_box, nonzero_mask


@dataclass
class CroppedCase:
    """One case in canonical order, cropped to the box of its non-zero voxels.

    images: (C, z, y, x) float32, inside the box (a view of the full image, no copy).
    segmentation: (z, y, x) int16 inside the box, or None (inference).
    geometry: the grid of the input files; ``geometry.spacing`` is the spacing (mm, z, y, x).
    shape_before_cropping: canonical shape (z, y, x) of the full image, voxels.
    crop_bbox: half-open voxel ranges ((z0, z1), (y0, y1), (x0, x1)) of the box.
    """

    case_id: str
    images: np.ndarray
    segmentation: np.ndarray | None
    geometry: ImageGeometry
    shape_before_cropping: tuple[int, int, int]
    crop_bbox: BoundingBox

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along (z, y, x)."""
        return self.geometry.spacing

    @property
    def shape_after_cropping(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.images.shape[1:])

    def nonzero_mask(self) -> np.ndarray:
        """(z, y, x) bool, voxels non-zero in any channel with holes filled; computed on demand."""
        return nonzero_mask(self.images)


def crop_case(
    images: np.ndarray,
    geometry: ImageGeometry,
    *,
    segmentation: np.ndarray | None = None,
    case_id: str,
    label_file: str | os.PathLike | None = None,
) -> CroppedCase:
    """Crop a canonical case to the box of voxels non-zero in any channel.

    images: (C, z, y, x) float32 in canonical order (``io.image_io.read_channels``).
    geometry: grid of the files the images came from; its canonical shape must be (z, y, x).
    segmentation: (z, y, x) integer label map on the same grid, or None.
    label_file: the file ``segmentation`` was read from, if any; a label map on another grid
        then raises ``ImageReadError`` naming it (else ValueError).
    """
    if images.ndim != 4:
        raise ValueError(f"case '{case_id}': images must be (C, z, y, x), got shape {images.shape}")
    if tuple(images.shape[1:]) != tuple(geometry.canonical_shape):
        raise ValueError(
            f"case '{case_id}': image shape {images.shape[1:]} is not the canonical shape "
            f"{geometry.canonical_shape} of its geometry"
        )
    if segmentation is not None and tuple(segmentation.shape) != tuple(images.shape[1:]):
        if label_file is not None:
            raise ImageReadError(
                f"{label_file}: label shape {tuple(segmentation.shape)} (z, y, x) differs from the image's "
                f"{tuple(images.shape[1:])}. Run with --verify_dataset_integrity for a full check."
            )
        raise ValueError(
            f"case '{case_id}': label map shape {segmentation.shape} differs from the image's {images.shape[1:]}"
        )
    box = nonzero_bounding_box(images)
    return CroppedCase(
        case_id=case_id,
        images=crop_to_box(images, box),
        segmentation=None if segmentation is None else crop_to_box(segmentation, box),
        geometry=geometry,
        shape_before_cropping=tuple(int(n) for n in images.shape[1:]),
        crop_bbox=box,
    )


def read_cropped_case(
    image_files: Sequence[str | os.PathLike],
    *,
    label_file: str | os.PathLike | None = None,
    case_id: str,
    image_io: ImageIO | None = None,
) -> CroppedCase:
    """Read one case's channel files (and label file) and crop it; see :func:`crop_case`.

    image_io: the reader (``io.image_io.image_io_for_dataset``); default: chosen by file ending.

    Unreadable files, and a label on another grid than the images, raise ``ImageReadError``
    naming the file.
    """
    images, geometry = read_channels(image_files, image_io)
    segmentation = None if label_file is None else read_segmentation(label_file, image_io)[0]
    return crop_case(images, geometry, segmentation=segmentation, case_id=case_id, label_file=label_file)
