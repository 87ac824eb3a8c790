"""Canonical reorientation and export must round-trip exactly for every kind of affine."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.demo.synthetic_dataset import _file_orientation
from nnsam3d.io.geometry import ImageGeometry, ImageReadError
from nnsam3d.io.image_io import read_segmentation, read_volume, write_segmentation


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "ASL", "PIR", "oblique"])
def test_read_then_write_restores_file_exactly(tmp_path, orientation):
    rng = np.random.default_rng(0)
    canonical = rng.integers(0, 5, size=(7, 11, 13)).astype(np.uint8)
    spacing = (3.0, 0.8, 0.7)
    data, affine = _file_orientation(canonical, spacing, orientation)
    source = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(source))

    read, geometry = read_segmentation(source)
    assert read.shape == (7, 11, 13), "canonical order is (z, y, x) whatever the file order"
    np.testing.assert_array_equal(read, canonical)
    np.testing.assert_allclose(geometry.spacing, spacing, rtol=1e-6)

    target = tmp_path / "out.nii.gz"
    write_segmentation(read, geometry, target)
    written, original = nib.load(str(target)), nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(original.affine)


def test_geometry_json_round_trip():
    geometry = ImageGeometry(shape=(4, 5, 6), affine=tuple(tuple(r) for r in np.diag([-1.0, -2.0, 3.0, 1.0])))
    again = ImageGeometry.from_json(geometry.to_json())
    assert again == geometry
    assert geometry.axis_codes == "LPS"
    assert geometry.spacing == (3.0, 2.0, 1.0)
    assert geometry.canonical_shape == (6, 5, 4)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), str(path))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    with pytest.raises(ImageReadError, match="case_0000.nii.gz"):
        read_volume(path)
