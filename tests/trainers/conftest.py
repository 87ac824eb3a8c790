"""Fixtures of the trainer tests: a tiny preprocessed dataset and a vit_tiny SAM-format checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.model.backbones import get_backbone

DATASET = "Dataset990_SyntheticCT"
TINY_NETWORK = {"patch_size": (16, 32, 32), "adapter_dim": 32, "decoder_channels": (8, 16, 32, 64)}
"""Shrinks the planner's vit_tiny network so that a training step takes tens of milliseconds."""


@pytest.fixture(scope="session")
def _dataset_template(tmp_path_factory, point_folders) -> Path:
    """Raw and preprocessed tiny phantom dataset, planned and preprocessed once per session with
    the real pipeline (vit_tiny); the network then shrunk to ``TINY_NETWORK``."""
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp("dataset_template")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(num_training=6, num_test=0, shape=(16, 48, 48))
        generate_synthetic_dataset(root / "raw", spec)
        plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
    plans.network = plans.network.replace(**TINY_NETWORK)
    plans.save(root / "preprocessed" / DATASET / f"{plans.plans_name}.json")
    return root


def install_tiny_dataset(template: Path, root: Path) -> str:
    """Copy the template's raw and preprocessed dataset under ``root`` (raw/, preprocessed/)."""
    for name in ("raw", "preprocessed"):
        shutil.copytree(template / name / DATASET, root / name / DATASET)
    return DATASET


@pytest.fixture
def tiny_dataset(nnsam3d_folders, _dataset_template) -> str:
    """The tiny vit_tiny dataset copied into this test's own nnsam3d folders; returns its name."""
    return install_tiny_dataset(_dataset_template, nnsam3d_folders.raw.parent)


@pytest.fixture(scope="module")
def module_dataset(tmp_path_factory, _dataset_template, point_folders):
    """Like ``tiny_dataset`` but shared by a test module: (dataset name, root folder).

    The nnsam3d folder variables point into the root for as long as the module runs.
    """
    root = tmp_path_factory.mktemp("module_folders")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        yield install_tiny_dataset(_dataset_template, root), root


@pytest.fixture(scope="session")
def tiny_network() -> dict:
    """``TINY_NETWORK`` for test modules (which cannot import this conftest)."""
    return dict(TINY_NETWORK)


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    """A SAM-format file with vit_tiny's shapes, built by segment-anything's own builder."""
    from nnsam3d.model.sam_reference import build_reference_sam

    torch.manual_seed(0)
    sam = build_reference_sam(get_backbone("vit_tiny"))
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path
