"""Reading and writing images in any supported format: the one door every volume goes through.

The reader/writer is chosen as nnU-Net chooses it: by ``dataset.json``'s ``file_ending``, or by
its ``overwrite_image_reader_writer`` (a reader/writer name) when set.

=============================  ===================  =====================================
file ending                    default              also accepted as override
=============================  ===================  =====================================
``.nii.gz``, ``.nii``          ``NibabelIO``        ``SimpleITKIO``
``.mha``, ``.nrrd``, ``.gipl``,  ``SimpleITKIO``
``.gipl.gz``
a DICOM series (folder)        ``io.dicom_series``  (prediction input only)
=============================  ===================  =====================================

Every reader returns float32 voxels and the file's :class:`~nnsam3d.io.geometry.ImageGeometry`;
the canonical functions here reorient to (z, y, x) (``io.geometry``). Every writer writes
atomically (``io.atomic``), in the format the target path's ending names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from nnsam3d.io.atomic import atomic_path
from nnsam3d.io.dicom_series import DicomSeries, read_dicom_series
from nnsam3d.io.geometry import ImageGeometry, ImageReadError, from_canonical, require_valid_grid, to_canonical
from nnsam3d.io.nibabel_io import NibabelIO
from nnsam3d.io.raw_dataset import DatasetDescription, DatasetFormatError
from nnsam3d.io.simpleitk_io import SimpleITKIO


class ImageIO(Protocol):
    """A reader/writer of one family of formats."""

    name: str
    file_endings: tuple[str, ...]

    def read(self, path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
        """(float32 voxels in file order (i, j, k), geometry); ImageReadError naming the file."""

    def write(self, data: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
        """Write file-order voxels (i, j, k) at exactly ``path``."""


READER_WRITERS: dict[str, type] = {
    "NibabelIO": NibabelIO,
    # nnU-Net's NibabelIO keeps the file's voxel order while NibabelIOWithReorient reorients to
    # RAS; nnsam3d always reorients internally and writes back on the input's grid, so both
    # names give the same predictions.
    "NibabelIOWithReorient": NibabelIO,
    "SimpleITKIO": SimpleITKIO,
    "SimpleITKIOWithReorient": SimpleITKIO,
}
"""``overwrite_image_reader_writer`` names nnsam3d understands."""

DEFAULT_READER_WRITER = {".nii.gz": "NibabelIO", ".nii": "NibabelIO"}
"""Endings whose default differs from SimpleITK."""

SUPPORTED_FILE_ENDINGS = tuple(dict.fromkeys(NibabelIO.file_endings + SimpleITKIO.file_endings))

_NNUNET_2D_READERS = ("NaturalImage2DIO", "Tiff3DIO")


class UnsupportedFormatError(DatasetFormatError):
    """A file ending or reader/writer name nnsam3d cannot read; the message lists what it can."""


def image_io_for(file_ending: str, reader_writer: str | None = None, source: str = "dataset.json") -> ImageIO:
    """The reader/writer for files ending in ``file_ending`` (``reader_writer`` overrides the choice)."""
    if reader_writer is not None:
        if reader_writer not in READER_WRITERS:
            hint = " nnsam3d reads 3D volumes only." if reader_writer in _NNUNET_2D_READERS else ""
            raise UnsupportedFormatError(
                f"{source}: overwrite_image_reader_writer '{reader_writer}' is not supported "
                f"(supported: {', '.join(READER_WRITERS)}).{hint}"
            )
        io = READER_WRITERS[reader_writer]()
        if file_ending not in io.file_endings:
            raise UnsupportedFormatError(
                f"{source}: {reader_writer} cannot read file_ending '{file_ending}' "
                f"(it reads {', '.join(io.file_endings)})."
            )
        return io
    if file_ending not in SUPPORTED_FILE_ENDINGS:
        raise UnsupportedFormatError(
            f"{source}: file_ending '{file_ending}' is not supported; nnsam3d reads "
            f"{', '.join(SUPPORTED_FILE_ENDINGS)} (and DICOM series as prediction input). "
            f"Convert the images, e.g. with SimpleITK."
        )
    return READER_WRITERS[DEFAULT_READER_WRITER.get(file_ending, "SimpleITKIO")]()


def image_io_for_dataset(description: DatasetDescription, source: str = "dataset.json") -> ImageIO:
    """The reader/writer ``dataset.json`` asks for (``file_ending`` and ``overwrite_image_reader_writer``)."""
    return image_io_for(description.file_ending, description.extra.get("overwrite_image_reader_writer"), source)


def file_ending_of(path: str | os.PathLike) -> str:
    """The supported ending ``path`` has (longest match: ``.nii.gz`` before ``.gz``), or its suffix."""
    name = Path(path).name
    for ending in sorted(SUPPORTED_FILE_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    return Path(path).suffix


def _io_for_path(path: str | os.PathLike, image_io: ImageIO | None) -> ImageIO:
    if image_io is not None:
        return image_io
    try:
        return image_io_for(file_ending_of(path))
    except UnsupportedFormatError as error:
        raise ImageReadError(str(error).replace("dataset.json: file_ending", f"{path}: file ending", 1)) from None


def read_volume_in_file_order(
    path: str | os.PathLike | DicomSeries, image_io: ImageIO | None = None
) -> tuple[np.ndarray, ImageGeometry]:
    """One image file (or DICOM series) → (float32 voxels in file order (i, j, k), geometry).

    image_io: the reader (default: chosen by the path's ending)."""
    if isinstance(path, DicomSeries):
        return read_dicom_series(path)
    data, geometry = _io_for_path(path, image_io).read(path)
    require_valid_grid(path, geometry.affine_array)
    return data, geometry


def read_volume(
    path: str | os.PathLike | DicomSeries, image_io: ImageIO | None = None
) -> tuple[np.ndarray, ImageGeometry]:
    """One image file → (canonical float32 array (z, y, x), geometry of the file)."""
    data, geometry = read_volume_in_file_order(path, image_io)
    return to_canonical(data, geometry.affine_array), geometry


def read_channels(
    paths: Sequence[str | os.PathLike | DicomSeries], image_io: ImageIO | None = None
) -> tuple[np.ndarray, ImageGeometry]:
    """One file per channel → (canonical float32 array (C, z, y, x), geometry of the first file).

    Channels whose canonical shape differs from the first's raise ImageReadError naming the file.
    """
    arrays = []
    reference: ImageGeometry | None = None
    for path in paths:
        data, geometry = read_volume(path, image_io)
        if reference is None:
            reference = geometry
        elif geometry.canonical_shape != reference.canonical_shape:
            # Canonical shapes, not file shapes: a channel stored in another orientation is
            # fine as long as it covers the same grid, and equal file shapes in different
            # orientations would not stack.
            raise ImageReadError(
                f"{path}: shape {geometry.shape} ({geometry.axis_codes}) differs from the first channel "
                f"{paths[0]} ({reference.shape}, {reference.axis_codes})."
            )
        arrays.append(data)
    if reference is None:
        raise ValueError("read_channels needs at least one file")
    return np.stack(arrays), reference


def read_segmentation(path: str | os.PathLike, image_io: ImageIO | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """A label map → (canonical int16 array (z, y, x), geometry)."""
    data, geometry = read_volume(path, image_io)
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ImageReadError(f"{path}: label map holds non-integer values.")
    return rounded.astype(np.int16), geometry


def write_volume_in_file_order(
    data: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, image_io: ImageIO | None = None
) -> None:
    """Write file-order voxels (i, j, k) on ``geometry`` at ``path``, atomically.

    image_io: the writer (default: chosen by the path's ending)."""
    writer = _io_for_path(path, image_io)
    with atomic_path(path, expected_bytes=data.nbytes + 352) as temporary:  # + a header (NIfTI's is 352 bytes)
        writer.write(data, geometry, temporary)


def write_volume(
    canonical: np.ndarray,
    geometry: ImageGeometry,
    path: str | os.PathLike,
    dtype: np.dtype | type | None = None,
    image_io: ImageIO | None = None,
) -> None:
    """Write a canonical (z, y, x) array onto the file grid described by ``geometry``, atomically."""
    data = from_canonical(canonical, geometry)
    if dtype is not None:
        data = data.astype(dtype)
    write_volume_in_file_order(data, geometry, path, image_io)


def segmentation_dtype(labels: np.ndarray) -> type:
    """uint8 when the label values fit, else int16."""
    return np.uint8 if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.int16


def write_segmentation(
    canonical: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, image_io: ImageIO | None = None
) -> None:
    """Write a label map (uint8 when it fits, else int16) in the file's original geometry."""
    write_volume(canonical, geometry, path, dtype=segmentation_dtype(canonical), image_io=image_io)
