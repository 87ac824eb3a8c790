"""DICOM series as prediction input: sorted by position, split by SeriesInstanceUID, exact
geometry, and clear errors for missing slices, uneven spacing, mixed orientations, non-image series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from nnsam3d.inference.case_inputs import CaseInputError, find_input_cases
from nnsam3d.io.dicom_series import find_dicom_series
from nnsam3d.io.image_io import read_volume_in_file_order

OBLIQUE = (0.9781476, 0.2079117, 0.0, -0.2079117, 0.9781476, 0.0)  # rotated 12 degrees about the slice normal


def volume(seed: int = 0, shape=(6, 10, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


def edit(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.mark.parametrize("orientation", ((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), OBLIQUE))
def test_series_reads_in_slice_order_with_its_geometry(tmp_path, ct_series_writer, orientation):
    expected = volume()
    spacing, origin = (2.5, 0.75, 0.8), (-100.0, -120.0, -50.0)
    # File names in scrambled order: only ImagePositionPatient tells the slice order.
    ct_series_writer(tmp_path / "case", expected, spacing, origin, orientation, order_in_folder=[3, 0, 5, 1, 4, 2])
    (series,), problems = find_dicom_series(tmp_path / "case")
    assert problems == {}
    data, geometry = read_volume_in_file_order(series)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), expected)  # (column, row, slice) file order
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    for i, j, k in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (3, 4, 5)]:
        lps = np.asarray(origin) + i * spacing[2] * row + j * spacing[1] * column + k * spacing[0] * normal
        ras = geometry.affine_array @ [i, j, k, 1.0]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)  # positions stored with 4 decimals
    np.testing.assert_allclose(sorted(geometry.spacing), sorted(spacing), rtol=1e-5)


def test_folder_of_case_folders_and_folder_of_several_series(tmp_path, ct_series_writer):
    ct_series_writer(tmp_path / "in" / "patient_a", volume(1))
    ct_series_writer(tmp_path / "in" / "patient_b", volume(2), series_number=3)
    ct_series_writer(tmp_path / "in" / "patient_b", volume(3, shape=(5, 10, 12)), series_number=7, prefix="B")
    selection = find_input_cases(tmp_path / "in", ".nii.gz", num_channels=1)
    assert selection.problems == {}
    assert [case.case_id for case in selection.cases] == ["patient_a", "patient_b_3", "patient_b_7"]
    assert [len(case.image_files[0].files) for case in selection.cases] == [6, 6, 5]
    with pytest.raises(CaseInputError, match="one-channel models"):
        find_input_cases(tmp_path / "in", ".nii.gz", num_channels=2)


def problem_of(folder) -> str:
    series, problems = find_dicom_series(folder)
    assert series == [] and len(problems) == 1
    return next(iter(problems.values()))


def test_missing_slice_is_named(tmp_path, ct_series_writer):
    files = ct_series_writer(tmp_path / "case", volume())
    files[3].unlink()
    message = problem_of(tmp_path / "case")
    assert "missing slice(s): 5.000 mm between IM0002.dcm and IM0004.dcm" in message
    assert "slice spacing is 2.500 mm (about 1 slice(s) missing)" in message


def test_uneven_spacing_is_named(tmp_path, ct_series_writer):
    files = ct_series_writer(tmp_path / "case", volume())
    edit(files[3], ImagePositionPatient=[-100.0, -120.0, -50.0 + 3 * 2.5 + 0.9])
    assert "uneven slice spacing: gaps from 1.600 to 3.400 mm" in problem_of(tmp_path / "case")


def test_mixed_orientations_are_named(tmp_path, ct_series_writer):
    files = ct_series_writer(tmp_path / "case", volume())
    edit(files[2], ImageOrientationPatient=list(OBLIQUE))
    message = problem_of(tmp_path / "case")
    assert "mixed orientations" in message and "IM0002.dcm" in message


def test_non_image_series_and_single_slices_are_named(tmp_path, ct_series_writer):
    ct_series_writer(tmp_path / "case", volume(), modality="RTSTRUCT")
    assert "not an image series (modality RTSTRUCT)" in problem_of(tmp_path / "case")
    ct_series_writer(tmp_path / "single", volume(shape=(1, 10, 12)))
    assert "a single slice (IM0000.dcm)" in problem_of(tmp_path / "single")
    ct_series_writer(tmp_path / "both", volume())
    ct_series_writer(tmp_path / "both", volume(), series_number=2, modality="SEG", prefix="S")
    series, problems = find_dicom_series(tmp_path / "both")
    assert len(series) == 1 and len(problems) == 1  # the image series is still predicted
