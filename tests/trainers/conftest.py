"""Fixtures of the trainer tests: a vit_tiny SAM-format checkpoint (the tiny preprocessed dataset
fixtures, ``tiny_dataset`` and ``module_dataset``, are in ``tests/conftest.py``; the reliability
tests use them too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnsam3d.model.backbones import get_backbone


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    """A SAM-format file with vit_tiny's shapes, built by segment-anything's own builder."""
    from nnsam3d.model.sam_reference import build_reference_sam

    torch.manual_seed(0)
    sam = build_reference_sam(get_backbone("vit_tiny"))
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path
