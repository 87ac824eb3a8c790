"""A synthetic CT series predicted into a DICOM Segmentation: frames, references and segment
labels checked against the NIfTI path's prediction of the same voxels."""

from __future__ import annotations

import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, phantom_case
from nnsam3d.inference.case_inputs import CaseInputError
from nnsam3d.inference.output_formats import DICOM_SEG
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.dicom_seg import MissingOptionalDependencyError, require_dicom_extra
from nnsam3d.io.raw_dataset import DatasetDescription

SPACING = (2.5, 0.75, 0.75)  # (slice, row, column) mm; the plans' target spacing, so nothing is resampled
ORIGIN = (-12.0, -15.0, 30.0)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def predictor(tmp_path, make_plans, make_random_folds) -> Predictor:
    description = DatasetDescription.from_json(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2, "lesion": 3},
         "numTraining": 1, "file_ending": ".nii.gz"}
    )
    plans = make_plans(target_spacing=SPACING)
    make_random_folds(plans, description, tmp_path / "model", folds=(0,))
    return Predictor.from_model_folder(tmp_path / "model", device="cpu", use_mirroring=False)


@pytest.fixture
def ct_case(tmp_path, ct_series_writer):
    """The same CT phantom as a DICOM series (``dicom/ct``) and as NIfTI (``nifti/ct_0000.nii.gz``)."""
    image, _, _ = phantom_case(np.random.default_rng(0), SyntheticDatasetSpec(shape=(10, 40, 36), spacing=SPACING))
    slices = np.rint(image[0]).astype(np.int16)  # (slice, row, column) in LPS: rows posterior, columns left
    files = ct_series_writer(tmp_path / "dicom" / "ct", slices, SPACING, ORIGIN, order_in_folder=range(9, -1, -1))
    affine = np.eye(4)  # NIfTI (RAS) of the same grid: voxel (column, row, slice)
    affine[:3, :3] = np.diag([-SPACING[2], -SPACING[1], SPACING[0]])
    affine[:3, 3] = [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]]
    (tmp_path / "nifti").mkdir()
    nib.save(nib.Nifti1Image(slices.transpose(2, 1, 0), affine), str(tmp_path / "nifti" / "ct_0000.nii.gz"))
    return files


def test_dicom_seg_matches_the_nifti_path(tmp_path, predictor, ct_case):
    predictor.predict_folder(tmp_path / "nifti", tmp_path / "from_nifti")
    report = predictor.predict_folder(tmp_path / "dicom", tmp_path / "seg", output_format=DICOM_SEG)
    assert report.completed == ["ct"] and not report.failures
    reference = np.asarray(nib.load(str(tmp_path / "from_nifti" / "ct.nii.gz")).dataobj).transpose(2, 1, 0)
    assert len(np.unique(reference)) >= 2, "a label map with several classes, so that misplaced frames would show"

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_case]
    seg = pydicom.dcmread(tmp_path / "seg" / "ct.dcm")
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in sources}
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "liver"), (2, "kidney"), (3, "lesion")]

    frames = hd.seg.segread(tmp_path / "seg" / "ct.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True,
    )
    np.testing.assert_array_equal(frames, reference)  # slice by slice, row by row, as the NIfTI path predicts

    # The DICOM input with the default output format: a NIfTI on the series' grid, the same labels.
    predictor.predict_folder(tmp_path / "dicom", tmp_path / "dicom_as_nifti")
    from_dicom = nib.load(str(tmp_path / "dicom_as_nifti" / "ct.nii.gz"))
    np.testing.assert_allclose(from_dicom.affine, nib.load(str(tmp_path / "nifti" / "ct_0000.nii.gz")).affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj).transpose(2, 1, 0), reference)


def test_dicom_seg_needs_dicom_input_and_the_extra(tmp_path, predictor, ct_case, monkeypatch):
    with pytest.raises(CaseInputError, match="needs DICOM series as input"):
        predictor.predict_folder(tmp_path / "nifti", tmp_path / "seg", output_format=DICOM_SEG)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the extra were not installed
    with pytest.raises(MissingOptionalDependencyError, match=r"pip install 'nnsam3d\[dicom\]'"):
        require_dicom_extra()
    with pytest.raises(MissingOptionalDependencyError, match="highdicom is missing"):
        predictor.predict_folder(tmp_path / "dicom", tmp_path / "seg", output_format=DICOM_SEG)
    assert not (tmp_path / "seg").exists() or not list((tmp_path / "seg").iterdir())


def test_a_series_without_slice_thickness_gets_its_dicom_seg(tmp_path, predictor, ct_series_writer):
    image, _, _ = phantom_case(np.random.default_rng(1), SyntheticDatasetSpec(shape=(6, 24, 20), spacing=SPACING))
    files = ct_series_writer(tmp_path / "dicom" / "ct", np.rint(image[0]).astype(np.int16), SPACING, ORIGIN,
                             without=("SliceThickness",))
    assert "SliceThickness" not in pydicom.dcmread(files[0], stop_before_pixels=True)
    report = predictor.predict_folder(tmp_path / "dicom", tmp_path / "seg", output_format=DICOM_SEG)
    assert report.completed == ["ct"] and not report.failures, report.failures
    seg = pydicom.dcmread(tmp_path / "seg" / "ct.dcm")
    (measures,) = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert float(measures.SliceThickness) == pytest.approx(SPACING[0])  # the slice spacing stands in for it
    assert "SliceThickness" not in pydicom.dcmread(files[0], stop_before_pixels=True)  # the source is not changed


def test_a_multi_frame_file_is_named_before_anything_is_predicted(tmp_path, predictor, ct_case, monkeypatch):
    """One multi-frame DICOM file (the series' slices as frames): read as a series it would come
    out 4D and its DICOM-SEG cannot be written, so it is named, not predicted, in every output
    format, and the series beside it is predicted."""
    first = pydicom.dcmread(ct_case[0])
    first.NumberOfFrames = len(ct_case)
    first.PixelData = b"".join(pydicom.dcmread(f).PixelData for f in ct_case)
    (tmp_path / "dicom" / "multi").mkdir()
    first.save_as(tmp_path / "dicom" / "multi" / "frames.dcm", enforce_file_format=True)
    predicted = []
    original = Predictor.predict_scores
    monkeypatch.setattr(Predictor, "predict_scores",
                        lambda self, data: predicted.append(data.shape) or original(self, data))
    for output_format in (DICOM_SEG, None):
        report = predictor.predict_folder(tmp_path / "dicom", tmp_path / f"out_{output_format}",
                                          output_format=output_format)
        assert report.completed == ["ct"] and len(predicted) == 1
        predicted.clear()
        (failure,) = report.failures
        assert failure.case_id.startswith("multi") and "frames.dcm, 10 frames" in failure.message, failure
        assert "one multi-frame DICOM file" in failure.message and "Convert it" in failure.message
        assert sorted(p.name for p in (tmp_path / f"out_{output_format}").iterdir()) in (["ct.dcm"], ["ct.nii.gz"])
