"""Shared fixtures: isolated nnsam3d folders and small synthetic datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset

# CI has two cores; more threads only add contention.
torch.set_num_threads(2)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@dataclass
class Folders:
    raw: Path
    preprocessed: Path
    results: Path
    sam_checkpoints: Path


@pytest.fixture
def nnsam3d_folders(tmp_path, monkeypatch) -> Folders:
    """Point nnSAM3D_raw / _preprocessed / _results (and the SAM cache) at fresh temporary folders."""
    folders = Folders(
        raw=tmp_path / "raw",
        preprocessed=tmp_path / "preprocessed",
        results=tmp_path / "results",
        sam_checkpoints=tmp_path / "sam_checkpoints",
    )
    for variable, folder in (
        ("nnSAM3D_raw", folders.raw),
        ("nnSAM3D_preprocessed", folders.preprocessed),
        ("nnSAM3D_results", folders.results),
        ("nnSAM3D_sam_checkpoints", folders.sam_checkpoints),
    ):
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    return folders


@pytest.fixture
def small_ct_dataset(nnsam3d_folders) -> Path:
    """A 6-case anisotropic CT-like dataset (Dataset990_SyntheticCT) with mixed orientations."""
    spec = SyntheticDatasetSpec(num_training=6, num_test=2, shape=(16, 48, 48))
    return generate_synthetic_dataset(nnsam3d_folders.raw, spec)
