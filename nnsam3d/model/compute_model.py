"""Floating-point operations of one training step of 3DMedSAM, from the network's own layout.

``estimate_training_flops(config, batch_size)`` walks the shapes the network is built and run
on (:mod:`nnsam3d.model.layout`, like the memory model) and counts 2 FLOPs per multiply-add of
every linear layer, convolution, transposed convolution and attention product:

* forward: every operation once;
* backward: each operation again for its input gradient wherever something before it trains
  (everything after the 3D patch embedding, which trains in every mode; the patch embedding's
  and the stem's first convolution's inputs are the image, which needs no gradient), and once
  more for its weight gradient where its weight trains (frozen SAM weights: no weight
  gradient). Attention runs through SDPA on the widened head (``layout.sdpa_head_width``: head
  plus one relative-position column per key coordinate, see ``attention3d``): q·kᵀ and
  attention·v over that width forward; backward recomputes q·kᵀ and needs four more products
  (gradients of v, of the attention, of q and of k): 2.5 times the forward, as PyTorch counts
  the fused kernels. The query products with the relative-position tables have two operands
  that both get gradients: twice forward;
* activation checkpointing: the checkpointed encoder blocks' forward runs a second time during
  backward, up to the block's last matrix product (PyTorch's checkpoint stops early), without the
  fused attention of blocks that keep its output (``kept_attention_blocks``).

Normalisations, activations, softmax, the loss and the optimiser are elementwise: a few FLOPs
per element, below 1% of the total for every plan (they cost memory bandwidth, which the
assumed sustained throughput of :mod:`nnsam3d.model.compute_budget` absorbs).

The attention term (``attention`` in :meth:`FlopEstimate.breakdown`) counts the SDPA products
over each block's windows, padding tokens included; ``rel_pos`` the query products with the
decomposed relative-position tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from nnsam3d.model.backbones import BackboneSpec, get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.prompt_layout import prompt_branch_for, prompt_branch_forward_flops
from nnsam3d.model.tiny_vit_costs import checkpoint_recompute_flops, encoder_forward_flops
from nnsam3d.model.decoder_layout import decoder_layout
from nnsam3d.model.layout import (
    sdpa_head_width,
    window_layout,
)

ADAPTER_KERNEL_VOXELS = 27  # the adapters' depthwise 3x3x3 convolution


@dataclass
class FlopEstimate:
    """FLOPs of one training step (forward + backward, at ``batch_size``), by part.

    forward / backward: the step's two halves (backward includes checkpointing's recompute).
    parts: forward+backward FLOPs of ``patch_embedding``, ``attention`` (products over tokens),
    ``encoder_linear`` (qkv, projection, MLP), ``adapters``, ``decoder``, ``recompute``; in a
    clicked step also ``prompt_branch`` and ``click_rounds`` (decodes without gradient).
    """

    forward: float = 0.0
    backward: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def add(self, part: str, forward: float, *, input_gradient: bool, weight_gradient: bool,
            operands: float = 1) -> None:
        """One operation of ``forward`` FLOPs; ``operands``: backward cost in forwards when
        ``input_gradient`` (2 for a product of two activations, 2.5 for fused attention)."""
        backward = forward * (operands * input_gradient + weight_gradient)
        self.forward += forward
        self.backward += backward
        self.parts[part] = self.parts.get(part, 0.0) + forward + backward

    def breakdown(self) -> dict[str, float]:
        return {**self.parts, "forward": self.forward, "backward": self.backward, "total": self.total}


SDPA_BACKWARD_FORWARDS = 2.5
"""Fused attention's backward: the q·kᵀ recompute and four products, against two forward."""


def attention_forward_flops(window: tuple[int, int, int], windows: int, heads: int, head_dim: int) -> float:
    """SDPA's q·kᵀ and attention·v over ``windows`` boxes of ``window`` tokens, each
    ``2 * n² * width`` per head on the widened head."""
    n = prod(window)
    return windows * heads * 2 * 2 * n * n * sdpa_head_width(head_dim, window)


def relative_position_forward_flops(window: tuple[int, int, int], windows: int, heads: int, head_dim: int) -> float:
    """Query products with the relative-position embeddings: ``2 * n * extent * head_dim`` per
    head and axis, ``extent`` the window's size along the axis."""
    return windows * heads * 2 * prod(window) * sum(window) * head_dim


def estimate_training_flops(config: NetworkConfig, batch_size: int, click_rounds: int = 0) -> FlopEstimate:
    """FLOPs of one training step of ``build_network(config)`` at ``batch_size`` (see the module).

    click_rounds: 0 for a click-free step; from 1, a clicked step of ``nnSAM3DTrainer_interactive``
    with that many simulated-user rounds (see :func:`_clicked_step_flops`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if click_rounds < 0 or (click_rounds and not config.prompt_channels):
        raise ValueError(f"click_rounds must be 0, or positive for an interactive network (config.prompt_channels "
                         f"> 0); got {click_rounds} with {config.prompt_channels} prompt channels")
    spec = get_backbone(config.backbone)
    full = config.trainable == "full"
    dim, heads = spec.embed_dim, spec.num_heads
    head_dim, hidden = dim // heads, int(dim * spec.mlp_ratio)
    grid = config.token_grid
    tokens = batch_size * prod(grid)
    flops = FlopEstimate()
    if spec.tiny_vit is not None:
        for part, forward, input_gradient, weight_gradient, operands in encoder_forward_flops(spec.tiny_vit, config, batch_size):
            flops.add(part, forward, input_gradient=input_gradient, weight_gradient=weight_gradient, operands=operands)
        if config.activation_checkpointing:
            flops.parts["recompute"] = checkpoint_recompute_flops(spec.tiny_vit, config, batch_size)
            flops.backward += flops.parts["recompute"]
        _decoder_flops(spec, config, batch_size, flops)
        _clicked_step_flops(spec, config, batch_size, click_rounds, flops)
        return flops

    # The patch embedding trains in every mode; its input is the image (no gradient).
    flops.add("patch_embedding", 2 * tokens * dim * config.in_channels * prod(config.token_size),
              input_gradient=False, weight_gradient=True)
    recomputed = 0.0
    for index in range(spec.depth):
        layout = window_layout(grid, None if index in spec.global_attn_indexes else config.window_size)
        padded = batch_size * layout.padded_tokens
        block = FlopEstimate()
        block.add("encoder_linear", 2 * padded * dim * 3 * dim + 2 * padded * dim * dim,  # qkv, proj
                  input_gradient=True, weight_gradient=full)
        windows = batch_size * layout.num_windows
        attention = attention_forward_flops(layout.window, windows, heads, head_dim)
        block.add("attention", attention, input_gradient=True, weight_gradient=False, operands=SDPA_BACKWARD_FORWARDS)
        block.add("rel_pos", relative_position_forward_flops(layout.window, windows, heads, head_dim),
                  input_gradient=True, weight_gradient=False, operands=2)
        block.add("encoder_linear", 2 * 2 * tokens * dim * hidden, input_gradient=True, weight_gradient=full)
        if index in config.adapter_blocks:
            a = config.adapter_dim
            block.add("adapters", 2 * 2 * tokens * dim * a + 2 * tokens * a * ADAPTER_KERNEL_VOXELS,
                      input_gradient=True, weight_gradient=True)
        for part, value in block.parts.items():
            flops.parts[part] = flops.parts.get(part, 0.0) + value
        flops.forward += block.forward
        flops.backward += block.backward
        if config.is_checkpointed(index):
            # PyTorch's checkpoint stops recomputing once the last tensor backward needs is saved
            # again: the block's last matrix product (the adapter's up-projection, else the MLP's
            # second layer) saves its inputs before it runs, so it never runs a second time.
            last_product = 2 * tokens * dim * (config.adapter_dim if index in config.adapter_blocks else hidden)
            # A block that keeps its attention's output takes it from the checkpoint's cache.
            kept = attention if index in config.kept_attention_blocks else 0.0
            recomputed += block.forward - last_product - kept
    if config.activation_checkpointing:
        flops.backward += recomputed
        flops.parts["recompute"] = recomputed

    _decoder_flops(spec, config, batch_size, flops)
    _clicked_step_flops(spec, config, batch_size, click_rounds, flops)
    return flops


def _clicked_step_flops(spec: BackboneSpec, config: NetworkConfig, batch: int, rounds: int,
                        flops: FlopEstimate) -> None:
    """What a clicked step adds to a click-free one (``trainers/interactive.py``): the encoder runs
    once; the click-free decode and the ``rounds - 1`` earlier rounds run without gradient
    (``click_rounds``: decoder forwards, the rounds' prompt branch); the decode that trains runs
    the prompt branch too (``prompt_branch``: forward and backward, its layers from
    :mod:`nnsam3d.model.prompt_layout`; no gradient for the prompt itself)."""
    if not rounds:
        return
    decoder = FlopEstimate()
    _decoder_flops(spec, config, batch, decoder)
    branch = prompt_branch_forward_flops(prompt_branch_for(config), batch)
    branch_forward = sum(forward for forward, _ in branch)
    flops.add("click_rounds", rounds * decoder.forward + (rounds - 1) * branch_forward,
              input_gradient=False, weight_gradient=False)
    for forward, input_gradient in branch:
        flops.add("prompt_branch", forward, input_gradient=input_gradient, weight_gradient=True)


def _decoder_flops(spec: BackboneSpec, config: NetworkConfig, batch: int, flops: FlopEstimate) -> None:
    """Every layer of :func:`decoder_layout` (necks, laterals, stem, upsamplers, level
    convolutions, heads; all train). The first stem convolution reads the input, which needs no
    gradient; the average pooling before a lateral is not a matmul."""
    for layer in decoder_layout(config, spec.feature_dims, spec.feature_strides(config.token_size)).layers:
        flops.add("decoder", layer.forward_flops(batch), weight_gradient=True,
                  input_gradient=not (layer.kind == "stem" and layer.index == 0))
