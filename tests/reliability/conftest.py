"""Fixtures of the reliability tests: a small raw dataset to break."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset

SMALL_SPEC = SyntheticDatasetSpec(num_training=3, num_test=0, shape=(12, 32, 32))


@pytest.fixture
def small_raw_dataset(nnsam3d_folders) -> Path:
    """Three small CT-like cases (Dataset990_SyntheticCT) in this test's own raw folder."""
    return generate_synthetic_dataset(nnsam3d_folders.raw, SMALL_SPEC)
