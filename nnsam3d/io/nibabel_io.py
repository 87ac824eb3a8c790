"""NIfTI files through nibabel (``NibabelIO``): the default reader/writer for ``.nii.gz`` and ``.nii``.

Reading keeps the file's affine and qform/sform codes (``ImageGeometry.from_image``); writing
sets both forms to the geometry's affine with the codes the input had, so a prediction's header
says what the input's said.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from nnsam3d.io.geometry import ImageGeometry, ImageReadError


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI file and read its voxels; unreadable or truncated files raise ImageReadError."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found.")
    try:
        image = nib.load(str(path))
        # Force the read now: a truncated .nii.gz only fails when the voxels are decompressed.
        image.get_fdata(dtype=np.float32, caching="fill")
    except Exception as error:  # nibabel raises many kinds for broken files
        raise ImageReadError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error}).") from error
    if len(image.shape) < 3 or any(size > 1 for size in image.shape[3:]):
        raise ImageReadError(
            f"{path}: expected a 3D volume (one file per channel), found shape {image.shape}."
        )
    return image


class NibabelIO:
    """NIfTI (``.nii.gz``, ``.nii``) with nibabel; nnU-Net's ``NibabelIO`` / ``NibabelIOWithReorient``."""

    name = "NibabelIO"
    file_endings = (".nii.gz", ".nii")

    def read(self, path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
        """(float32 voxels in the file's order (i, j, k), geometry of the file)."""
        image = load_nifti(path)
        data = np.asarray(image.get_fdata(dtype=np.float32, caching="unchanged"))
        return data.reshape(image.shape[:3]), ImageGeometry.from_image(image)

    def write(self, data: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
        """Write file-order voxels (i, j, k) at ``path`` (not atomic; ``image_io`` wraps this)."""
        image = nib.Nifti1Image(data, geometry.affine_array)
        image.set_qform(geometry.affine_array, code=int(geometry.qform_code) or 1)
        image.set_sform(geometry.affine_array, code=int(geometry.sform_code) or 1)
        nib.save(image, str(path))
