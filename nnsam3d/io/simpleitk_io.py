"""MetaImage, NRRD, GIPL (and NIfTI on request) through SimpleITK (``SimpleITKIO``).

ITK describes a grid by origin, spacing and direction in LPS world coordinates, with the voxel
array indexed (i, j, k) = (column, row, slice). The same grid as an :class:`ImageGeometry`
(RAS+ affine) is ``affine[:3, :3] = F @ direction @ diag(spacing)``, ``affine[:3, 3] = F @ origin``
with ``F = diag(-1, -1, 1)`` (LPS → RAS). Going back, spacing is the length of each affine
column and direction the column divided by it: exact for axis-aligned grids (direction entries
0 and ±1), within a few units in the last place for oblique ones, so a prediction is written on
the input's grid in the input's format.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnsam3d.io.geometry import ImageGeometry, ImageReadError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""Flips the first two world axes; its own inverse."""


def geometry_from_sitk(image) -> ImageGeometry:
    """The :class:`ImageGeometry` of a 3D ``SimpleITK.Image`` (shape = ITK size (i, j, k))."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return ImageGeometry(
        shape=tuple(int(n) for n in image.GetSize()),
        affine=tuple(tuple(float(v) for v in row) for row in affine),
    )


def itk_grid(geometry: ImageGeometry) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction as 9 row-major values) in ITK's LPS terms for ``geometry``."""
    affine = geometry.affine_array
    lps = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    direction = lps / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    return tuple(map(float, origin)), tuple(map(float, spacing)), tuple(map(float, direction.reshape(-1)))


def sitk_image(data: np.ndarray, geometry: ImageGeometry):
    """File-order voxels (i, j, k) on ``geometry`` → ``SimpleITK.Image``."""
    import SimpleITK as sitk

    # GetImageFromArray takes numpy order (k, j, i): the reverse of ITK's index order.
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    origin, spacing, direction = itk_grid(geometry)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def array_from_sitk(image, source: str | os.PathLike) -> np.ndarray:
    """float32 voxels (i, j, k) of a 3D scalar image; anything else raises ImageReadError naming ``source``."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{source}: expected a 3D volume with one value per voxel (one file per channel), found a "
            f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel."
        )
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32, copy=False).transpose(2, 1, 0))


NO_ORIENTATION_ENDINGS = (".gipl", ".gipl.gz")
"""Formats that store origin and spacing but no direction: only ITK's identity direction fits."""


class SimpleITKIO:
    """Any 3D format SimpleITK reads and writes in one file; nnU-Net's ``SimpleITKIO``."""

    name = "SimpleITKIO"
    file_endings = (".mha", ".nrrd", ".gipl", ".gipl.gz", ".nii.gz", ".nii")

    def read(self, path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
        """(float32 voxels in the file's order (i, j, k), geometry of the file)."""
        import SimpleITK as sitk

        path = Path(path)
        if not path.is_file():
            raise ImageReadError(f"{path}: file not found.")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:  # ITK's exceptions arrive as RuntimeError
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise ImageReadError(f"{path}: cannot be read by SimpleITK ({reason}).") from error
        return array_from_sitk(image, path), geometry_from_sitk(image)

    def write(self, data: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
        """Write file-order voxels (i, j, k) at ``path``, compressed where the format allows."""
        import SimpleITK as sitk

        image = sitk_image(data, geometry)
        if str(path).endswith(NO_ORIENTATION_ENDINGS) and not np.allclose(image.GetDirection(), np.eye(3).reshape(-1)):
            raise ValueError(
                f"{path}: GIPL stores no orientation, and this grid's direction (LPS) is "
                f"{np.round(image.GetDirection(), 4).tolist()}, not the identity; choose .mha or .nrrd."
            )
        sitk.WriteImage(image, str(path), useCompression=True)
