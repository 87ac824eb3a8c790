"""Fingerprint extraction against values computed directly from the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.image_io import read_channels, read_segmentation
from nnsam3d.io.raw_dataset import DatasetDescription, DatasetFormatError, training_cases
from nnsam3d.schemas.fingerprint import DatasetFingerprint
from nnsam3d.planners.fingerprint_extraction import extract_fingerprint


def fingerprint_of(dataset, num_processes=1, **options) -> DatasetFingerprint:
    description = DatasetDescription.from_file(dataset / "dataset.json")
    return extract_fingerprint(dataset, description, dataset.name, num_processes, **options)


def foreground_intensities(dataset, channel=0) -> np.ndarray:
    description = DatasetDescription.from_file(dataset / "dataset.json")
    values = []
    for case in training_cases(dataset, description):
        images, _ = read_channels(case.image_files)
        label, _ = read_segmentation(case.label_file)
        values.append(images[channel][label > 0])
    return np.concatenate(values)


def test_geometry_is_canonical_whatever_the_file_orientation(small_ct_dataset):
    fingerprint = fingerprint_of(small_ct_dataset)
    description = DatasetDescription.from_file(small_ct_dataset / "dataset.json")
    cases = training_cases(small_ct_dataset, description)
    assert fingerprint.case_ids == [case.case_id for case in cases]
    # The phantoms are written RAS, LPS, ASL, oblique, ...; every spacing reads back as (z, y, x).
    np.testing.assert_allclose(fingerprint.spacings, [(3.0, 1.0, 1.0)] * len(cases), rtol=1e-6)
    for case, shape in zip(cases, fingerprint.shapes_before_cropping):
        images, _ = read_channels(case.image_files)
        assert shape == images.shape[1:]
    # CT air is -1000, not 0: nothing to crop.
    assert fingerprint.shapes_after_cropping == fingerprint.shapes_before_cropping
    assert fingerprint.modalities == {"0": "CT"}


def test_intensity_statistics_equal_direct_computation_when_the_sample_holds_every_voxel(small_ct_dataset):
    statistics = fingerprint_of(small_ct_dataset).intensity_statistics["0"]
    values = foreground_intensities(small_ct_dataset).astype(np.float64)
    assert statistics.mean == pytest.approx(values.mean())
    assert statistics.std == pytest.approx(values.std())
    assert statistics.median == pytest.approx(np.median(values))
    assert statistics.percentile_00_5 == pytest.approx(np.percentile(values, 0.5))
    assert statistics.percentile_99_5 == pytest.approx(np.percentile(values, 99.5))
    assert (statistics.min, statistics.max) == (values.min(), values.max())


def test_bounded_sample_is_seeded_and_close(small_ct_dataset):
    first = fingerprint_of(small_ct_dataset, samples_per_case=300).intensity_statistics["0"]
    again = fingerprint_of(small_ct_dataset, num_processes=2, samples_per_case=300).intensity_statistics["0"]
    assert first == again, "same samples whatever the number of processes"
    values = foreground_intensities(small_ct_dataset).astype(np.float64)
    assert first.mean == pytest.approx(values.mean(), abs=0.1 * values.std())
    assert first.mean != pytest.approx(values.mean(), abs=1e-9), "the sample really is a sample"
    assert (first.min, first.max) == (values.min(), values.max()), "extremes are exact, not sampled"


def test_class_statistics_count_every_voxel(small_ct_dataset):
    fingerprint = fingerprint_of(small_ct_dataset)
    description = DatasetDescription.from_file(small_ct_dataset / "dataset.json")
    labels = [read_segmentation(case.label_file)[0] for case in training_cases(small_ct_dataset, description)]
    assert sorted(fingerprint.class_statistics) == ["1", "2", "3"]
    for key, statistics in fingerprint.class_statistics.items():
        counts = [int((label == int(key)).sum()) for label in labels]
        assert statistics.voxel_counts == counts
        assert statistics.name == description.label_name(int(key))
        np.testing.assert_allclose(statistics.volumes_mm3, np.array(counts) * 3.0, rtol=1e-6)
        assert statistics.cases_present == sum(c > 0 for c in counts)


def test_json_round_trip(small_ct_dataset, tmp_path):
    fingerprint = fingerprint_of(small_ct_dataset)
    fingerprint.save(tmp_path / "dataset_fingerprint.json")
    json.loads((tmp_path / "dataset_fingerprint.json").read_text())
    assert DatasetFingerprint.load(tmp_path / "dataset_fingerprint.json") == fingerprint


@pytest.mark.parametrize(
    "change",
    [lambda c: c.pop("spacings"), lambda c: c.update(intensity_statistics={"0": {"mean": 1.0}})],
    ids=["missing key", "incomplete statistics"],
)
def test_malformed_fingerprint_file_is_a_value_error_naming_it(small_ct_dataset, tmp_path, change):
    path = tmp_path / "dataset_fingerprint.json"
    fingerprint_of(small_ct_dataset).save(path)
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"{path}: malformed fingerprint"):
        DatasetFingerprint.load(path)


def test_multichannel_mri_crops_the_zero_background(nnsam3d_folders):
    spec = SyntheticDatasetSpec(
        dataset_id=993, name="MRI", modality="MRI", num_channels=2, num_training=3, num_test=0, shape=(12, 32, 32)
    )
    dataset = generate_synthetic_dataset(nnsam3d_folders.raw, spec)
    fingerprint = fingerprint_of(dataset, num_processes=2)
    assert sorted(fingerprint.intensity_statistics) == ["0", "1"]
    assert fingerprint.intensity_statistics["0"].mean != fingerprint.intensity_statistics["1"].mean
    for before, after in zip(fingerprint.shapes_before_cropping, fingerprint.shapes_after_cropping):
        assert all(a <= b for a, b in zip(after, before)) and after != before


def test_missing_label_stops_before_anything_is_computed(small_ct_dataset):
    label = small_ct_dataset / "labelsTr" / "syntheticct_002.nii.gz"
    label.unlink()
    with pytest.raises(DatasetFormatError, match="syntheticct_002.nii.gz: label file missing"):
        fingerprint_of(small_ct_dataset)
