"""The case preprocessor: crop, normalise, resample, sample locations, and the way back.

Round trips go all the way from the raw file to a written NIfTI file through the recorded
properties (``geometry_restore`` + ``io.image_io.write_segmentation``), for every file orientation
the phantoms use (RAS, LPS, ASL, oblique, LAS, PIR).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset, write_case
from nnsam3d.io.image_io import read_channels, read_segmentation, write_segmentation
from nnsam3d.io.raw_dataset import DatasetDescription, training_cases
from nnsam3d.preprocessing.geometry_restore import restore_label_map
from nnsam3d.preprocessing.preprocessor import (
    MAX_LOCATIONS_PER_CLASS,
    preprocess_case,
    preprocess_case_files,
    sample_class_locations,
)


def cases_of(dataset: Path):
    return training_cases(dataset, DatasetDescription.from_file(dataset / "dataset.json"))


@pytest.fixture
def small_mri_dataset(nnsam3d_folders) -> Path:
    """Two-channel MRI-like phantoms with zero background (so cropping removes something)."""
    spec = SyntheticDatasetSpec(
        dataset_id=995, name="SyntheticMRI", modality="MRI", num_channels=2, num_training=6, num_test=0,
        shape=(16, 48, 48),
    )
    return generate_synthetic_dataset(nnsam3d_folders.raw, spec)


def assert_same_nifti(written: Path, original: Path) -> None:
    a, b = nib.load(str(written)), nib.load(str(original))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


@pytest.mark.parametrize("dataset_fixture", ["small_ct_dataset", "small_mri_dataset"])
def test_label_round_trip_is_exact_without_resampling(request, plans_for, tmp_path, dataset_fixture):
    dataset = request.getfixturevalue(dataset_fixture)
    plans = plans_for(dataset)
    orientations = set()
    for case in cases_of(dataset):
        result = preprocess_case_files(case.image_files, plans, label_file=case.label_file, case_id=case.case_id)
        properties = result.properties
        assert properties.shape_after_resampling == properties.shape_after_cropping, "no resampling needed"
        restored = restore_label_map(result.segmentation, properties)
        write_segmentation(restored, properties.geometry, tmp_path / f"{case.case_id}.nii.gz")
        assert_same_nifti(tmp_path / f"{case.case_id}.nii.gz", case.label_file)
        orientations.add(properties.geometry.axis_codes)
    assert {"RAS", "LPS", "PIR"} <= orientations


def test_mri_is_cropped_and_z_scored_per_channel(small_mri_dataset, plans_for):
    plans = plans_for(small_mri_dataset, use_nonzero_mask=True)
    assert [n.scheme for n in plans.normalization] == ["ZScoreNormalization"] * 2
    case = cases_of(small_mri_dataset)[0]
    result = preprocess_case_files(case.image_files, plans, label_file=case.label_file, case_id=case.case_id)
    properties = result.properties
    assert result.data.shape == (2, *properties.shape_after_resampling)
    assert properties.shape_after_cropping != properties.shape_before_cropping, "zero background is cropped"
    for channel in result.data:
        inside = channel[channel != 0]
        assert inside.mean() == pytest.approx(0.0, abs=1e-3)
        assert inside.std() == pytest.approx(1.0, abs=1e-2)


def make_large_structures_dataset(raw: Path) -> Path:
    """Three large ellipsoids (tens of voxels across) in a body on an anisotropic grid, written
    oblique, LPS and PIR: large enough that resampling changes only a thin boundary layer."""
    shape, spacing = (20, 80, 80), (3.0, 0.8, 0.8)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = np.array(shape) * np.array(spacing) / 2

    def ellipsoid(offset, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre + np.array(offset), radii)) <= 1

    body = ellipsoid([0, 0, 0], centre * np.array([1.2, 0.9, 0.9]))
    label = np.zeros(shape, np.uint8)
    label[ellipsoid([0, -8, -10], [24, 18, 16])] = 1
    label[ellipsoid([0, 14, 14], [22, 14, 13])] = 2
    label[ellipsoid([0, -10, 17], [18, 11, 11])] = 3
    label[~body] = 0
    noise = np.random.default_rng(0).normal(0, 10, shape)
    image = np.where(body, 300 + 100 * label.astype(np.float32) + noise, 0).astype(np.float32)[None]

    dataset = raw / "Dataset994_LargeStructures"
    for folder in ("imagesTr", "labelsTr"):
        (dataset / folder).mkdir(parents=True)
    for index, orientation in enumerate(("oblique", "LPS", "PIR")):
        write_case(dataset / "imagesTr", dataset / "labelsTr", f"large_{index}", image, label, spacing, orientation)
    (dataset / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )
    return dataset


@pytest.mark.parametrize("target_spacing", [(2.0, 1.3, 1.3), (1.5, 0.5, 0.5)])
def test_label_round_trip_with_resampling_keeps_every_class(nnsam3d_folders, plans_for, tmp_path, target_spacing):
    dataset = make_large_structures_dataset(nnsam3d_folders.raw)
    plans = plans_for(dataset, target_spacing)
    for case in cases_of(dataset):
        result = preprocess_case_files(case.image_files, plans, label_file=case.label_file, case_id=case.case_id)
        properties = result.properties
        assert properties.shape_after_resampling != properties.shape_after_cropping
        assert properties.spacing_after_resampling == target_spacing
        restored = restore_label_map(result.segmentation, properties)
        written = tmp_path / f"{case.case_id}.nii.gz"
        write_segmentation(restored, properties.geometry, written)

        back, original = nib.load(str(written)), nib.load(str(case.label_file))
        assert back.shape == original.shape
        np.testing.assert_allclose(back.affine, original.affine, atol=1e-5)
        back, original = np.asarray(back.dataobj), np.asarray(original.dataobj)
        for label in (1, 2, 3):
            overlap = np.sum((back == label) & (original == label))
            dice = 2 * overlap / (np.sum(back == label) + np.sum(original == label))
            assert dice >= 0.95, f"{case.case_id} class {label}: Dice {dice:.3f}"


def test_anisotropic_axis_is_resampled_by_nearest_neighbour(nnsam3d_folders, plans_for):
    """5 mm slices (more than 3x the in-plane 0.8 mm) to 2.5 mm: every new slice is a copy of an
    original slice, never a blend, while in-plane resampling stays cubic."""
    spec = SyntheticDatasetSpec(
        dataset_id=996, name="ThickSlices", num_training=1, num_test=0, shape=(10, 40, 40), spacing=(5.0, 0.8, 0.8)
    )
    dataset = generate_synthetic_dataset(nnsam3d_folders.raw, spec)
    case = cases_of(dataset)[0]
    original = preprocess_case_files(case.image_files, plans_for(dataset), case_id=case.case_id).data
    resampled = preprocess_case_files(case.image_files, plans_for(dataset, (2.5, 0.8, 0.8)), case_id=case.case_id).data
    assert resampled.shape[1] == 2 * original.shape[1]
    assert resampled.shape[2:] == original.shape[2:]
    for z in range(resampled.shape[1]):
        assert any(np.array_equal(resampled[:, z], original[:, k]) for k in range(original.shape[1])), z


def test_in_memory_and_file_entry_points_agree_and_leave_the_input_alone(small_mri_dataset, plans_for):
    plans = plans_for(small_mri_dataset, (2.0, 1.2, 1.2), use_nonzero_mask=True)
    case = cases_of(small_mri_dataset)[1]
    images, geometry = read_channels(case.image_files)
    label, _ = read_segmentation(case.label_file)
    images_before, label_before = images.copy(), label.copy()

    in_memory = preprocess_case(images, geometry, plans, segmentation=label, case_id=case.case_id)
    from_files = preprocess_case_files(case.image_files, plans, label_file=case.label_file, case_id=case.case_id)

    np.testing.assert_array_equal(images, images_before)
    np.testing.assert_array_equal(label, label_before)
    np.testing.assert_array_equal(in_memory.data, from_files.data)
    np.testing.assert_array_equal(in_memory.segmentation, from_files.segmentation)
    assert in_memory.properties == from_files.properties
    assert in_memory.data.dtype == np.float32 and in_memory.segmentation.dtype == np.int16

    # Images handed over are normalised in place instead of copied: the same result.
    handed_over = preprocess_case(images, geometry, plans, segmentation=label, case_id=case.case_id,
                                  overwrite_images=True)
    np.testing.assert_array_equal(handed_over.data, from_files.data)


def test_inference_case_without_label(small_ct_dataset, plans_for):
    case = cases_of(small_ct_dataset)[0]
    result = preprocess_case_files(case.image_files, plans_for(small_ct_dataset), case_id=case.case_id)
    assert result.segmentation is None and result.class_locations == {}
    assert result.properties.foreground_classes == ()


def test_class_locations_point_into_their_class(small_ct_dataset, plans_for):
    case = cases_of(small_ct_dataset)[2]
    result = preprocess_case_files(
        case.image_files, plans_for(small_ct_dataset), label_file=case.label_file, case_id=case.case_id
    )
    assert sorted(result.class_locations) == list(result.properties.foreground_classes) == [1, 2, 3]
    for label, coordinates in result.class_locations.items():
        assert coordinates.dtype == np.int32 and coordinates.shape[1] == 3
        assert np.all(result.segmentation[tuple(coordinates.T)] == label)
        # tiny phantoms: fewer voxels than the quota, so every voxel of the class is kept
        assert len(coordinates) == np.sum(result.segmentation == label)


def test_location_sampling_is_bounded_seeded_and_keeps_small_classes():
    segmentation = np.zeros((30, 60, 60), np.int16)
    segmentation[:, :40, :] = 1  # 72,000 voxels
    segmentation[5, 50, 50:53] = 2  # 3 voxels
    first = sample_class_locations(segmentation, seed=7)
    assert sorted(first) == [1, 2]
    assert len(first[1]) == MAX_LOCATIONS_PER_CLASS
    assert len(np.unique(first[1], axis=0)) == MAX_LOCATIONS_PER_CLASS, "without replacement"
    assert first[2].tolist() == [[5, 50, 50], [5, 50, 51], [5, 50, 52]]
    again = sample_class_locations(segmentation, seed=7)
    other = sample_class_locations(segmentation, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
