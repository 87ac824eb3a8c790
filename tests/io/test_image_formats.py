"""MetaImage and NRRD (SimpleITK) read into the canonical order and write back exactly, and the
reader/writer is chosen as nnU-Net chooses it (file ending, overwrite_image_reader_writer)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnsam3d.demo.synthetic_dataset import _file_orientation
from nnsam3d.io.geometry import ImageGeometry, ImageReadError
from nnsam3d.io.image_io import (
    UnsupportedFormatError,
    image_io_for,
    image_io_for_dataset,
    read_segmentation,
    read_volume,
    write_segmentation,
)
from nnsam3d.io.nibabel_io import NibabelIO
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.io.simpleitk_io import SimpleITKIO

ORIENTATIONS = ("RAS", "LPS", "ASL", "PIR", "oblique")
SPACING = (3.0, 0.8, 0.7)  # (z, y, x) mm, anisotropic


def itk_file(tmp_path, ending: str, orientation: str, seed: int = 0):
    """A label-like volume written by SimpleITK itself in ``orientation``; returns (path, canonical array)."""
    canonical = np.random.default_rng(seed).integers(0, 5, size=(7, 11, 13)).astype(np.uint8)
    data, ras_affine = _file_orientation(canonical, SPACING, orientation)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ras_affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((lps / spacing).reshape(-1)))
    image.SetOrigin(tuple(np.diag([-1.0, -1.0, 1.0]) @ ras_affine[:3, 3]))
    path = tmp_path / f"in{ending}"
    sitk.WriteImage(image, str(path))
    return path, canonical


@pytest.mark.parametrize("ending", (".mha", ".nrrd"))
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_itk_file_reads_canonically_and_writes_back_exactly(tmp_path, ending, orientation):
    source, canonical = itk_file(tmp_path, ending, orientation)
    read, geometry = read_segmentation(source)
    np.testing.assert_array_equal(read, canonical)
    np.testing.assert_allclose(geometry.spacing, SPACING, rtol=1e-12)

    # Every voxel sits where ITK puts it (ITK works in LPS; the geometry's affine is RAS).
    original = sitk.ReadImage(str(source))
    for index in [(0, 0, 0), (12, 0, 0), (0, 10, 6), (5, 3, 2)]:
        index = tuple(min(i, n - 1) for i, n in zip(index, original.GetSize()))
        ras = geometry.affine_array @ np.array([*index, 1.0])
        lps = np.array(original.TransformIndexToPhysicalPoint(tuple(int(i) for i in index)))
        np.testing.assert_allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-9)

    target = tmp_path / f"out{ending}"
    write_segmentation(read, geometry, target)
    written = sitk.ReadImage(str(target))
    assert written.GetSize() == original.GetSize()
    assert written.GetOrigin() == original.GetOrigin()
    assert written.GetSpacing() == original.GetSpacing()
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    assert written.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("orientation", ("LPS", "oblique"))
def test_nifti_through_simpleitk_matches_nibabel(tmp_path, orientation):
    canonical = np.random.default_rng(1).normal(size=(7, 11, 13)).astype(np.float32)
    data, affine = _file_orientation(canonical, SPACING, orientation)
    path = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    by_nibabel, geometry_nibabel = read_volume(path, NibabelIO())
    by_itk, geometry_itk = read_volume(path, SimpleITKIO())
    np.testing.assert_array_equal(by_itk, by_nibabel)
    np.testing.assert_allclose(geometry_itk.affine_array, geometry_nibabel.affine_array, atol=1e-5)


def test_reader_writer_follows_file_ending_and_override():
    assert isinstance(image_io_for(".nii.gz"), NibabelIO)
    assert isinstance(image_io_for(".mha"), SimpleITKIO)
    assert isinstance(image_io_for(".nrrd"), SimpleITKIO)
    assert isinstance(image_io_for(".nii.gz", "SimpleITKIO"), SimpleITKIO)
    description = DatasetDescription.from_json(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 1,
         "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}
    )
    assert isinstance(image_io_for_dataset(description), SimpleITKIO)
    assert description.to_json()["overwrite_image_reader_writer"] == "SimpleITKIO"  # kept verbatim
    with pytest.raises(UnsupportedFormatError, match="NaturalImage2DIO.*3D volumes only"):
        image_io_for(".png", "NaturalImage2DIO")
    with pytest.raises(UnsupportedFormatError, match="NibabelIO cannot read file_ending '.mha'"):
        image_io_for(".mha", "NibabelIO")
    with pytest.raises(UnsupportedFormatError, match=r"file_ending '\.tif' is not supported.*\.mha"):
        image_io_for(".tif")


def test_broken_and_unsuitable_itk_files_are_named(tmp_path):
    source, _ = itk_file(tmp_path, ".mha", "RAS")
    broken = tmp_path / "case_0000.mha"
    broken.write_bytes(source.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="case_0000.mha"):
        read_volume(broken)
    vector = tmp_path / "rgb_0000.mha"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(vector))
    with pytest.raises(ImageReadError, match="rgb_0000.mha: expected a 3D volume"):
        read_volume(vector)
    oblique = ImageGeometry((13, 11, 7), tuple(map(tuple, _file_orientation(np.zeros((7, 11, 13)), SPACING, "oblique")[1])))
    with pytest.raises(ValueError, match="GIPL stores no orientation"):
        write_segmentation(np.zeros((7, 11, 13), np.int16), oblique, tmp_path / "x.gipl")
    assert not list(tmp_path.glob("*gipl*")), "nothing half-written"
