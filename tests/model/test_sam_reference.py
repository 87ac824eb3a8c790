"""segment-anything's modelling code imports without torchvision, through one documented door."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from nnsam3d.model.sam_reference import import_sam_builder, import_sam_modeling


def test_modeling_and_builder_import():
    modeling = import_sam_modeling()
    assert modeling.ImageEncoderViT.__module__ == "segment_anything.modeling.image_encoder"
    assert callable(import_sam_builder()._build_sam)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_without_torchvision_the_predictor_says_why():
    import_sam_modeling()
    with pytest.raises(ImportError, match="torchvision"):
        sys.modules["segment_anything"].SamPredictor
