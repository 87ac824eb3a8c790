"""segment-anything's own modelling code, importable without torchvision.

``import segment_anything`` runs the package ``__init__``, which imports ``SamPredictor`` and
through it torchvision (for image resizing). torchvision is not installable with every torch
build (not with the CPU build nnsam3d is tested on), while ``segment_anything.modeling`` and
``segment_anything.build_sam`` need only torch. This module is the one place that deals with
it: when torchvision is missing or broken, the ``segment_anything`` package is registered
without running its ``__init__``, so that its ``modeling`` and ``build_sam`` submodules import
as usual; asking that package for anything else (``SamPredictor``) raises an ImportError that
says why.

nnsam3d's network does not need segment-anything at run time (it has its own 3D code). The
reference is used to build SAM-format checkpoints and reference encoders for tests, and to
compare against SAM's own ``ImageEncoderViT``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import torch

from nnsam3d.model.backbones import BackboneSpec

PACKAGE = "segment_anything"


def _register_package_without_init() -> None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ImportError(
            "segment-anything is not installed (nnsam3d needs it only for its tests): "
            "pip install segment-anything, or pip install 'nnsam3d[test]'"
        )
    package = importlib.util.module_from_spec(spec)  # has __path__, __init__ not executed

    def missing_attribute(name: str):
        raise ImportError(
            f"segment_anything.{name} is not available: segment_anything was imported without its "
            f"package __init__ because torchvision is missing or broken "
            f"(see nnsam3d.model.sam_reference)."
        )

    package.__getattr__ = missing_attribute
    sys.modules[PACKAGE] = package


def _forget_partial_import() -> None:
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def _ensure_package() -> None:
    if PACKAGE in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is not None:
        try:
            importlib.import_module(PACKAGE)
            return
        except Exception:  # a torchvision built for another torch fails in many ways
            _forget_partial_import()
    _register_package_without_init()


def import_sam_modeling() -> ModuleType:
    """``segment_anything.modeling`` (``ImageEncoderViT``, ``Sam`` ...), without torchvision."""
    _ensure_package()
    return importlib.import_module(PACKAGE + ".modeling")


def import_sam_builder() -> ModuleType:
    """``segment_anything.build_sam`` (``_build_sam``, ``sam_model_registry``), without torchvision."""
    _ensure_package()
    return importlib.import_module(PACKAGE + ".build_sam")


def build_reference_sam(spec: BackboneSpec) -> torch.nn.Module:
    """A SAM model of ``spec``'s encoder hyper-parameters, built by segment-anything's own
    ``_build_sam`` (random weights, SAM's 1024-pixel geometry); ``state_dict()`` of it is a
    SAM-format checkpoint."""
    builder = import_sam_builder()
    if (spec.sam_image_size, spec.sam_patch_size, spec.sam_window_size) != (1024, 16, 14):
        raise ValueError(f"{spec.name}: segment-anything's builder only makes SAM's 1024/16/14 geometry")
    return builder._build_sam(
        encoder_embed_dim=spec.embed_dim,
        encoder_depth=spec.depth,
        encoder_num_heads=spec.num_heads,
        encoder_global_attn_indexes=list(spec.global_attn_indexes),
    )
