"""3DMedSAM: build the network from a :class:`NetworkConfig`, optionally from SAM's weights.

>>> network = build_network(config, sam_checkpoint="sam_vit_b_01ec64.pth")
>>> full, half, quarter = network(volume)       # deep supervision on (training)
>>> network.deep_supervision = False
>>> logits = network(volume)                     # (B, K, z, y, x)

Interactive networks (``config.prompt_channels > 0``) also take a prompt; the encoder's
features do not depend on it, so they can be computed once and decoded with many prompts:

>>> features = network.encode(volume)
>>> logits = network.decode(volume, features, prompts)   # prompts (B, P, z, y, x)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import Tensor, nn

from nnsam3d.model.backbones import BackboneSpec, get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.decoder3d import Decoder3D
from nnsam3d.model.encoder3d import Encoder3D, is_new_3d_parameter
from nnsam3d.model.lite_medsam_weights import (
    adapt_lite_medsam_encoder_state,
    check_lite_medsam_shapes,
    load_lite_medsam_encoder_state,
)
from nnsam3d.model.layout import decoder_level_shapes, token_grid
from nnsam3d.model.prompt_encoder import PromptEncoder
from nnsam3d.model.prompt_layout import prompt_branch_for
from nnsam3d.model.sam_checkpoints import SamCheckpointError, SamSource, load_sam_encoder_state, sam_source_of
from nnsam3d.model.tiny_vit3d import TinyViTEncoder3D, is_new_tiny_vit_parameter
from nnsam3d.model.weight_adaptation import adapt_sam_encoder_state


def build_encoder(spec: BackboneSpec, config: NetworkConfig) -> nn.Module:
    """The 3D image encoder of ``spec``: SAM's ViT (:class:`Encoder3D`) or LiteMedSAM's TinyViT
    (:class:`TinyViTEncoder3D`); both return their decoder features channels last."""
    if spec.tiny_vit is None:
        return Encoder3D(spec, config)
    return TinyViTEncoder3D(spec.tiny_vit, config.in_channels, config.adapter_blocks, config.adapter_dim,
                            config.activation_checkpointing, config.input_window)


def is_new_encoder_parameter(name: str, config: NetworkConfig) -> bool:
    """Encoder parameters that the pre-trained file does not provide (so they train unless
    everything is frozen): the ViT's 3D parts, the TinyViT's adapters."""
    if get_backbone(config.backbone).is_tiny_vit:
        return is_new_tiny_vit_parameter(name)
    return is_new_3d_parameter(name)


class MedSAM3D(nn.Module):
    """SAM's image encoder in 3D plus a multi-scale 3D decoder.

    forward(x): x ``(B, C, z, y, x)`` with every spatial size a multiple of
    ``config.token_size``. Returns logits ``(B, K, z, y, x)`` when ``deep_supervision`` is
    False, else ``(full, half, quarter)`` at decoder levels 0, 1, 2
    (``layout.decoder_level_shapes``): ``(B, K, z, y, x)``, then each axis halved (ceil) once
    and twice, ``(B, K, z/2, y/2, x/2)`` and ``(B, K, z/4, y/4, x/4)``.
    ``deep_supervision`` starts as ``config.deep_supervision`` and may be toggled at any time.

    forward(x, prompts): with ``config.prompt_channels > 0`` a prompt ``(B, P, z, y, x)`` may be
    given (see :mod:`nnsam3d.model.prompt_encoder`); ``None`` is automatic mode, computed exactly
    as by a network without the prompt branch.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        spec = get_backbone(config.backbone)
        self.config = config
        self.deep_supervision = config.deep_supervision
        self.sam_source: SamSource | None = None
        """The SAM file the encoder was loaded from (set by :func:`load_sam_weights`), None for
        random weights; checkpoints rebuild the frozen part from it (``trained_weights``)."""
        self.encoder = build_encoder(spec, config)
        self.decoder = Decoder3D(spec.feature_dims, spec.feature_strides(config.token_size), config)
        branch = prompt_branch_for(config)
        self.prompt_encoder = None if branch is None else PromptEncoder(branch)

    def forward(self, x: Tensor, prompts: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        return self.decode(x, self.encode(x), prompts)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder's feature tokens (shallow to deep, each ``(B, Z', H, W, D)``); independent of prompts."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input (B, {self.config.in_channels}, z, y, x), got {tuple(x.shape)}"
            )
        return self.encoder(x)

    def decode(
        self, x: Tensor, features: list[Tensor], prompts: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Logits from the input ``x`` and its features ``encode(x)``, with an optional prompt."""
        grid = token_grid(tuple(x.shape[2:]), self.config.token_size)
        extra_terms = None
        if prompts is not None:
            if self.prompt_encoder is None:
                raise ValueError("this network has no prompt branch (config.prompt_channels is 0); it is not interactive")
            expected = (x.shape[0], self.config.prompt_channels, *x.shape[2:])
            if tuple(prompts.shape) != expected:
                raise ValueError(f"expected prompts of shape {expected}, got {tuple(prompts.shape)}")
            shapes = decoder_level_shapes(tuple(x.shape[2:]), grid)
            extra_terms = self.prompt_encoder(prompts.to(x.dtype), shapes)
        return self.decoder(x, features, grid, self.deep_supervision, extra_terms)

    @property
    def is_interactive(self) -> bool:
        return self.prompt_encoder is not None


def parameter_is_trainable(name: str, config: NetworkConfig) -> bool:
    """Whether parameter ``name`` of :class:`MedSAM3D` trains under ``config.trainable``.

    ``full``: all. ``adapters`` / ``frozen_encoder``: the decoder, the encoder parameters SAM
    does not provide in this form (3D patch embedding, depth position embedding, depth
    relative-position tables, adapters) and, with ``train_norms``, the encoder's LayerNorms.
    """
    if config.trainable == "full" or not name.startswith("encoder."):
        return True
    encoder_name = name[len("encoder.") :]
    if is_new_encoder_parameter(encoder_name, config):
        return True
    return config.train_norms and any(norm in encoder_name for norm in (".norm1.", ".norm2.", ".attn.norm.", ".mlp.norm."))


def apply_trainable_mode(network: MedSAM3D) -> None:
    """Set ``requires_grad`` of every parameter from ``network.config``."""
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(parameter_is_trainable(name, network.config))
    if isinstance(network.encoder, TinyViTEncoder3D):
        # Nothing before stage 1 trains unless everything does: skip its autograd record.
        network.encoder.frozen_prefix = network.config.trainable != "full"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
"""``torch.compile``'s modes: ``reduce-overhead`` replays the compiled step as CUDA graphs (shapes
are static in training and sliding windows), ``max-autotune`` also benchmarks kernel choices at
compilation. On a CPU the modes compile the same code."""


def compile_network(network: nn.Module, mode: str = "default") -> nn.Module:
    """``torch.compile`` of ``network`` in ``mode`` (``COMPILE_MODES``; PyTorch's default inductor
    backend; on the CPU it needs a C++ compiler). Compilation happens at the first call, for the
    input shape of that call; training and sliding-window inference keep one patch size, so it
    happens once. The compiled module shares parameters and state with ``network``: checkpoints
    are still written from ``network`` itself."""
    import torch

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got '{mode}'")
    return torch.compile(network, mode=None if mode == "default" else mode)


def use_channels_last_decoder(network: MedSAM3D) -> None:
    """Store the decoder's 3D convolution weights channels-last (``torch.channels_last_3d``), so
    that cuDNN runs them, and the layers they feed, on NDHWC tensors: the layout its bf16 tensor-core
    kernels prefer. The network computes the same function; a checkpoint written from it loads into
    a network of the default layout. Eager InstanceNorm reads its input contiguous (a copy each
    way), which is why this is an option to measure (``benchmarks/step_variants.py``), not a default;
    ``torch.compile`` chooses layouts itself."""
    import torch

    network.decoder.to(memory_format=torch.channels_last_3d)


def load_sam_weights(network: MedSAM3D, sam_checkpoint: str | os.PathLike) -> None:
    """Load SAM's image encoder from a SAM-format file into ``network.encoder``, adapted to 3D.

    Raises :class:`SamCheckpointError` naming the file when it does not fit the backbone.
    """
    config = network.config
    spec = get_backbone(config.backbone)
    if spec.tiny_vit is not None:
        state = load_lite_medsam_encoder_state(sam_checkpoint)
        check_lite_medsam_shapes(state, spec.tiny_vit, sam_checkpoint)
        adapted = adapt_lite_medsam_encoder_state(state, config.in_channels)
    else:
        sam_state = load_sam_encoder_state(sam_checkpoint, backbone=config.backbone)
        adapted = adapt_sam_encoder_state(sam_state, config.in_channels, config.token_size)
    missing, unexpected = network.encoder.load_state_dict(adapted, strict=False)
    missing_from_sam = [key for key in missing if not is_new_encoder_parameter(key, config)]
    if missing_from_sam or unexpected:
        # load_sam_encoder_state has checked the shapes; this guards the key mapping itself.
        raise SamCheckpointError(
            f"{sam_checkpoint}: the adapted SAM weights do not match the 3D encoder "
            f"(missing {missing_from_sam[:5]}, unexpected {unexpected[:5]})."
        )
    network.sam_source = sam_source_of(sam_checkpoint)


def build_network(config: NetworkConfig, sam_checkpoint: str | os.PathLike | None = None) -> MedSAM3D:
    """Build 3DMedSAM for ``config``.

    With ``sam_checkpoint`` (a SAM-format file, see :mod:`nnsam3d.model.sam_checkpoints`),
    SAM's encoder weights are loaded and adapted to 3D; without, everything is initialised at
    random for training from scratch. In both cases ``config.trainable`` then decides which
    parameters require gradients (:func:`parameter_is_trainable`).
    """
    network = MedSAM3D(config)
    if sam_checkpoint is None:
        network.encoder.init_from_scratch()
    else:
        load_sam_weights(network, sam_checkpoint)
    apply_trainable_mode(network)
    return network


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a module (elements, not bytes)."""

    trainable: int
    total: int

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"{self.trainable / 1e6:.2f} M of {self.total / 1e6:.2f} M parameters trainable "
            f"({100 * self.trainable_share:.1f}%)"
        )


def count_parameters(module: nn.Module) -> ParameterCounts:
    parameters = list(module.parameters())
    return ParameterCounts(
        trainable=sum(p.numel() for p in parameters if p.requires_grad),
        total=sum(p.numel() for p in parameters),
    )
