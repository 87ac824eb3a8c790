"""Preprocessing a whole dataset into the case store: content, resuming, cleaning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnsam3d.io.raw_dataset import DatasetFormatError
from nnsam3d.preprocessing.dataset_preprocessing import preprocess_dataset


def mark_as_stale(store, case_id: str) -> None:
    """Overwrite a finished case's data with zeros: a run that skips the case leaves them."""
    path = store.folder / f"{case_id}.npy"
    np.save(path, np.zeros_like(np.load(path)))


def is_marked(store, case_id: str) -> bool:
    return not np.any(store.load_data(case_id, mmap=False))


def test_every_case_is_stored_readably(small_ct_dataset, nnsam3d_folders, plans_for):
    plans = plans_for(small_ct_dataset, (2.0, 1.2, 1.2))
    summary = preprocess_dataset(990, plans, num_processes=2)
    store = summary.store
    assert store.folder == nnsam3d_folders.preprocessed / small_ct_dataset.name / plans.data_identifier
    assert summary.preprocessed == store.case_ids() == [f"syntheticct_{i:03d}" for i in range(6)]
    for case_id in store.case_ids():
        properties = store.load_properties(case_id)
        data, segmentation = store.load_data(case_id), store.load_segmentation(case_id)
        assert isinstance(data, np.memmap), "the data loader reads patches without loading the volume"
        assert data.shape == (1, *properties.shape_after_resampling) and data.dtype == np.float32
        assert segmentation.shape == (1, *properties.shape_after_resampling)
        for label, coordinates in store.load_class_locations(case_id).items():
            assert np.all(segmentation[0][tuple(coordinates.T)] == label)
    copied = nnsam3d_folders.preprocessed / small_ct_dataset.name / "dataset.json"
    assert json.loads(copied.read_text()) == json.loads((small_ct_dataset / "dataset.json").read_text())


def test_rerun_skips_finished_cases_and_redoes_a_partial_one(small_ct_dataset, plans_for):
    plans = plans_for(small_ct_dataset)
    store = preprocess_dataset(990, plans, num_processes=2).store
    mark_as_stale(store, "syntheticct_000")
    # An interrupted run: arrays written, properties (written last) missing.
    (store.folder / "syntheticct_003.json").unlink()
    (store.folder / "syntheticct_003.npy").write_bytes(b"truncated")

    summary = preprocess_dataset(990, plans, num_processes=2)
    assert summary.preprocessed == ["syntheticct_003"]
    assert len(summary.skipped) == 5
    assert is_marked(store, "syntheticct_000"), "finished cases are not touched"
    redone = store.load_properties("syntheticct_003")
    assert store.load_data("syntheticct_003").shape == (1, *redone.shape_after_resampling)


def test_clean_redoes_everything(small_ct_dataset, plans_for):
    plans = plans_for(small_ct_dataset)
    store = preprocess_dataset(990, plans).store
    mark_as_stale(store, "syntheticct_000")
    summary = preprocess_dataset(990, plans, clean=True)
    assert len(summary.preprocessed) == 6 and summary.skipped == []
    assert not is_marked(store, "syntheticct_000")


def test_new_preprocessing_settings_redo_every_case(small_ct_dataset, plans_for):
    store = preprocess_dataset(990, plans_for(small_ct_dataset)).store
    shape_before = store.load_properties("syntheticct_000").shape_after_resampling
    summary = preprocess_dataset(990, plans_for(small_ct_dataset, (1.5, 1.0, 1.0)))
    assert len(summary.preprocessed) == 6
    shape_after = store.load_properties("syntheticct_000").shape_after_resampling
    assert shape_after[0] == 2 * shape_before[0]


def test_cases_removed_from_the_raw_dataset_leave_the_store(small_ct_dataset, plans_for):
    plans = plans_for(small_ct_dataset)
    preprocess_dataset(990, plans)
    (small_ct_dataset / "imagesTr" / "syntheticct_005_0000.nii.gz").unlink()
    (small_ct_dataset / "labelsTr" / "syntheticct_005.nii.gz").unlink()
    summary = preprocess_dataset(990, plans)
    assert summary.removed == ["syntheticct_005"]
    assert "syntheticct_005" not in summary.store.case_ids()
    assert not (summary.store.folder / "syntheticct_005.npy").exists()


def test_incomplete_raw_case_stops_before_anything_is_written(small_ct_dataset, nnsam3d_folders, plans_for):
    plans = plans_for(small_ct_dataset)
    (small_ct_dataset / "labelsTr" / "syntheticct_001.nii.gz").unlink()
    with pytest.raises(DatasetFormatError, match="syntheticct_001.nii.gz: label file missing"):
        preprocess_dataset(990, plans)
    assert list(nnsam3d_folders.preprocessed.iterdir()) == []



def test_class_locations_list_classes_without_reading_them_and_skip_empty_ones(small_ct_dataset, plans_for):
    store = preprocess_dataset(990, plans_for(small_ct_dataset)).store
    case_id = store.case_ids()[0]
    stored = dict(store.load_class_locations(case_id))
    assert sorted(stored) == [1, 2, 3]
    empty = {**stored, 4: np.zeros((0, 3), dtype=np.int32)}
    store.write_case(case_id, store.load_data(case_id, mmap=False), store.load_segmentation(case_id, mmap=False),
                     store.load_properties(case_id), empty)
    locations = store.load_class_locations(case_id)
    assert sorted(locations) == [1, 2, 3] and len(locations) == 3
    for label, coordinates in stored.items():
        np.testing.assert_array_equal(locations[label], coordinates)
    with pytest.raises(KeyError):
        locations[4]
