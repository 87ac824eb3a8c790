"""Fixtures of the inference tests: model folders of random-weight networks (the hand-made plans,
``make_plans``, are in ``tests/conftest.py``; the interactive tests use them too).

The model folders hold real checkpoint files (``io.checkpoint_file``) of vit_tiny networks
built by ``build_network`` with random weights: everything the predictor reads is real, only
the weights are untrained. The end-to-end test trains its own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pytest
import torch

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.schemas.plans import ChannelNormalization, Plans


def save_random_folds(plans: Plans, description: DatasetDescription, model_dir: Path, folds=(0, 1), seed: int = 0) -> None:
    """fold_K/checkpoint_final.pth with random-weight networks, as a trainer would lay them out."""
    for index, fold in enumerate(folds):
        torch.manual_seed(seed + index)
        network = build_network(plans.network)
        checkpoint = ModelCheckpoint("nnSAM3DTrainer", str(fold), 1, plans.to_json(), description.to_json(),
                                     network.state_dict())
        save_checkpoint(checkpoint, model_dir / f"fold_{fold}" / "checkpoint_final.pth")


@dataclass
class RandomModel:
    """A raw dataset with a model folder of random-weight folds 0 and 1."""

    root: Path
    dataset: str
    raw_dir: Path
    model_dir: Path
    plans: Plans
    description: DatasetDescription


@pytest.fixture(scope="module")
def mri_model(tmp_path_factory, point_folders, make_plans) -> RandomModel:
    """Two-channel MRI-like phantoms (so that a case can miss a channel), 4 test cases, with the
    nnsam3d folder variables pointing into the fixture's root while the module runs."""
    root = tmp_path_factory.mktemp("mri_model")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(dataset_id=991, name="SyntheticMRI", modality="MRI", num_channels=2,
                                    num_training=1, num_test=4, shape=(12, 36, 36))
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        description = DatasetDescription.from_file(raw_dir / "dataset.json")
        plans = make_plans((3.0, 1.0, 1.0), num_channels=2, dataset_name=spec.folder_name)
        plans.normalization = [
            ChannelNormalization(channel=c, modality=description.modality(c), scheme="ZScoreNormalization")
            for c in range(2)
        ]
        model_dir = root / "results" / spec.folder_name / "nnSAM3DTrainer__nnsam3d_plans"
        save_random_folds(plans, description, model_dir)
        yield RandomModel(root, spec.folder_name, raw_dir, model_dir, plans, description)


@pytest.fixture
def make_random_folds():
    """:func:`save_random_folds`."""
    return save_random_folds


# ---------------------------------------------------------------------------------------------
# Synthetic CT series written slice by slice with pydicom (in the test extra), as a scanner stores them.


def write_ct_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(2.5, 0.75, 0.75),
    origin=(-100.0, -120.0, -50.0),
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_number: int = 1,
    study_uid: str | None = None,
    modality: str = "CT",
    order_in_folder=None,
    prefix: str = "IM",
    without: tuple[str, ...] = (),
) -> list[Path]:
    """Write ``volume`` (slice, row, column) int16 HU as one CT series; returns the files in slice order.

    spacing: (slice, row, column) mm. origin: LPS position of the first slice's first pixel.
    orientation: ImageOrientationPatient (row direction, column direction). Slice k lies at
    origin + k * spacing[0] * (row x column). ``order_in_folder``: a permutation of the slices
    for the file names (``PREFIX0000.dcm``, ...), so that readers must sort by position, not by name.
    ``without``: attribute keywords left out of every file (as some exports omit e.g. SliceThickness).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    names = order_in_folder if order_in_folder is not None else range(len(volume))
    files = [None] * len(volume)
    for k, name in zip(range(len(volume)), names):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^CT", "PH001", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, series_number, modality
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "nnsam3d tests"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin) + k * spacing[0] * normal]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(volume[k].astype(np.int16)).tobytes()
        for keyword in without:
            delattr(ds, keyword)
        path = folder / f"{prefix}{name:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[k] = path
    return files


@pytest.fixture(scope="session")
def ct_series_writer():
    """:func:`write_ct_series` (test modules cannot import conftest under --import-mode=importlib)."""
    return write_ct_series


def copy_test_cases(model: RandomModel, target: Path, count: int | None = None) -> list[str]:
    """The first ``count`` test cases' channel files of ``model``'s dataset copied into ``target``
    (created); returns their identifiers."""
    target.mkdir(parents=True)
    files = sorted((model.raw_dir / "imagesTs").iterdir())
    case_ids = sorted({f.name.rsplit("_", 1)[0] for f in files})[:count]
    for file in files:
        if file.name.rsplit("_", 1)[0] in case_ids:
            shutil.copy(file, target / file.name)
    return case_ids


@pytest.fixture
def copy_cases():
    """:func:`copy_test_cases`."""
    return copy_test_cases
