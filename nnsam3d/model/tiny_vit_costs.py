"""Memory and FLOPs of the 3D TinyViT encoder (LiteMedSAM's), stage by stage.

The memory model (:mod:`nnsam3d.model.memory_model`) and the compute model
(:mod:`nnsam3d.model.compute_model`) call these for a TinyViT backbone instead of their ViT walk;
the decoder part is shared. Shapes come from :class:`~nnsam3d.model.backbones.TinyViTStages` and
the patch: stage ``s`` has ``Z x ceil(Y / stride_s) x ceil(X / stride_s)`` tokens.

**What autograd saves** (per element, 4 bytes in fp32, autocast copies as in the ViT model):

* In ``adapters``/``frozen_encoder`` mode the patch embedding and stage 0 run without autograd
  (``TinyViTEncoder3D.frozen_prefix``): nothing of them is saved. Attention blocks before the first
  adapter save nothing either (no input and no weight there needs a gradient); from the first
  adapter on, gradients flow back through every later operation.
* An attention block through which a gradient flows saves: its LayerNorm inputs (the window
  copy with its padding, and the MLP's) and statistics; what SDPA saves (query, key and value,
  views of the qkv output, the output, a log-sum-exp per row); the padded input of the depthwise
  convolution (convolutions save their input whatever needs a gradient); the GELU input; the
  adapter's input and three bottleneck tensors. In ``full`` mode also the inputs of qkv, the
  projection and fc2.
* A patch merging saves its three convolutions' inputs and its two GELU inputs; the neck its two
  convolutions' and two LayerNorms' inputs.

Parameters are counted on a module built on the meta device (no memory, exact by construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil

import torch
from torch import nn

from nnsam3d.model.backbones import TinyViTStages
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.layout import window_layout
from nnsam3d.model.tiny_vit3d import DEPTHWISE_DEPTH, TinyViTEncoder3D, is_new_tiny_vit_parameter

FP32 = 4


@dataclass(frozen=True)
class StageGrid:
    """Tokens of one stage for one sample: depth, height, width."""

    z: int
    y: int
    x: int

    @property
    def tokens(self) -> int:
        return self.z * self.y * self.x

    def padded_tokens(self, window: int) -> int:
        # TinyViT pads every slice to whole windows of window x window tokens, also where the
        # slice is smaller than one window (SAM's ViT windows would be clipped to the grid).
        return self.windows(window) * window * window

    def windows(self, window: int) -> int:
        return self.z * window_layout((1, self.y, self.x), (1, window, window)).num_windows

    @property
    def depth_padded_tokens(self) -> int:
        """Tokens after replicating ``DEPTHWISE_DEPTH // 2`` slices above and below."""
        return (self.z + 2 * (DEPTHWISE_DEPTH // 2)) * self.y * self.x


def stage_grids(stages: TinyViTStages, patch_size: tuple[int, int, int]) -> list[StageGrid]:
    z, y, x = patch_size
    return [StageGrid(z, ceil(y / s), ceil(x / s)) for s in stages.stage_strides]


@dataclass(frozen=True)
class StageShape:
    """One stage at a batch: its width, tokens, and (attention stages) windows and MLP width."""

    stage: int
    grid: StageGrid
    dim: int
    tokens: int
    window: int = 0
    heads: int = 0
    padded: int = 0
    windows: int = 0
    hidden: int = 0


def stage_shapes(stages: TinyViTStages, config: NetworkConfig, batch: int) -> list[StageShape]:
    shapes = []
    for stage, grid in enumerate(stage_grids(stages, config.patch_size)):
        dim = stages.embed_dims[stage]
        shape = StageShape(stage, grid, dim, batch * grid.tokens)
        if stage > 0:
            window = stages.window_sizes[stage]
            shape = StageShape(stage, grid, dim, batch * grid.tokens, window, stages.num_heads[stage],
                               batch * grid.padded_tokens(window), batch * grid.windows(window),
                               int(dim * stages.mlp_ratio))
        shapes.append(shape)
    return shapes


@dataclass(frozen=True)
class ParameterCount:
    total: int
    trainable: int
    matmul_weights: int
    """Elements of every linear/convolution weight (autocast keeps a 2-byte copy of each)."""


def encoder_parameters(stages: TinyViTStages, config: NetworkConfig) -> ParameterCount:
    return _encoder_parameters(stages, config.in_channels, config.adapter_blocks, config.adapter_dim,
                               config.trainable == "full")


@lru_cache(maxsize=256)
def _encoder_parameters(stages: TinyViTStages, in_channels: int, adapter_blocks: tuple[int, ...], adapter_dim: int,
                        full: bool) -> ParameterCount:
    # Counted on an encoder built on the meta device: a few hundred ms each, and the planner asks
    # for the same few encoders hundreds of times (it took half a minute to plan LiteMedSAM).
    with torch.device("meta"):
        encoder = TinyViTEncoder3D(stages, in_channels, adapter_blocks, adapter_dim)
    total = trainable = weights = 0
    for name, parameter in encoder.named_parameters():
        total += parameter.numel()
        trainable += parameter.numel() if full or is_new_tiny_vit_parameter(name) else 0
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            weights += module.weight.numel()
    return ParameterCount(total, trainable, weights)


def first_gradient_block(config: NetworkConfig) -> int:
    """Index (among attention blocks) of the first block whose every operation a gradient flows
    back through: 0 in ``full`` mode (the stem trains), else the block after the first adapter
    (in the first adapter's own block only the adapter has a backward)."""
    if config.trainable == "full":
        return 0
    return min(config.adapter_blocks, default=10**9) + 1


MASKED_ATTENTION_BACKWARD_FORWARDS = 2.5
"""Backward of attention with the bias tables as a float mask, in forwards: fused kernels (CUDA's
memory-efficient one, the CPU's flash one) recompute q k^T and need four products, against two
forward, as PyTorch counts them."""


@dataclass(frozen=True)
class EncoderMemory:
    """Saved bytes by part, the largest single activation and the largest block's bytes."""

    saved: dict[str, int]
    largest_tensor: int
    largest_block: int
    largest_block_tensor: int
    recompute_peak: int
    """Encoder activations alive at the worst recompute under checkpointing: backward reaches a
    block once everything saved after it is freed, so only what was saved before it is still
    there, with the block's own activations and a gradient and an input gradient of its largest
    tensor. The TinyViT's largest blocks come first (stage 1), when little else is left."""


def encoder_saved_memory(stages: TinyViTStages, config: NetworkConfig, batch: int, low: int, cast: int) -> EncoderMemory:
    """Bytes autograd saves in the encoder (``low``: bytes of linear/conv outputs; ``cast``:
    autocast's copy of an fp32 input, 0 in fp32)."""
    full = config.trainable == "full"
    grids = stage_grids(stages, config.patch_size)
    dims = stages.embed_dims
    normalised = cast or FP32
    saved: dict[str, int] = {}
    largest_tensor = largest_block = largest_block_tensor = recompute_peak = 0

    def add(part: str, nbytes: int) -> None:
        saved[part] = saved.get(part, 0) + nbytes

    if full:
        g0, c = grids[0], config.in_channels
        add("stem", batch * g0.tokens * (normalised * c + FP32 * stages.patch_embed_hidden + low * stages.patch_embed_hidden))
        hidden0 = int(dims[0] * stages.mbconv_expand_ratio)
        for _ in range(stages.depths[0]):
            add("stem", batch * (normalised * g0.tokens * dims[0] + low * g0.tokens * hidden0
                                 + low * hidden0 * g0.depth_padded_tokens + 2 * low * g0.tokens * hidden0
                                 + FP32 * g0.tokens * dims[0]))
            largest_tensor = max(largest_tensor, FP32 * batch * g0.tokens * hidden0)
    gradient_from = first_gradient_block(config)
    index = 0
    for shape in stage_shapes(stages, config, batch):
        stage, grid, dim, tokens = shape.stage, shape.grid, shape.dim, shape.tokens
        if stage > 0:
            heads, padded, hidden = shape.heads, shape.padded, shape.hidden
            for _ in range(stages.depths[stage]):
                block: dict[str, int] = {}
                adapter = index in config.adapter_blocks
                if index >= gradient_from:
                    block = {
                        "norm1": FP32 * padded * dim + 2 * FP32 * padded,
                        "attention": low * 4 * padded * dim + FP32 * heads * padded,
                        "local_conv": low * dim * batch * grid.depth_padded_tokens,
                        "norm2": FP32 * tokens * dim + 2 * FP32 * tokens,
                        "gelu": low * tokens * hidden,
                    }
                    if full:
                        block["linear_inputs"] = normalised * padded * dim + low * padded * dim + low * tokens * hidden
                if adapter:
                    shares_fc1_input = full and cast == 0
                    block["adapter"] = (0 if shares_fc1_input else normalised * tokens * dim) + 3 * low * tokens * config.adapter_dim
                total = sum(block.values())
                largest_block = max(largest_block, total)
                block_tensor = max(FP32 * tokens * hidden, low * padded * dim)
                largest_block_tensor = max(largest_block_tensor, block_tensor)
                largest_tensor = max(largest_tensor, FP32 * tokens * hidden)
                if total:
                    recompute_peak = max(recompute_peak, sum(saved.values()) + total + 2 * block_tensor)
                # Under checkpointing a block through which a gradient flows keeps only its input.
                add(f"block_{index}", FP32 * tokens * dim if config.activation_checkpointing and total else total)
                index += 1
        if stage < len(dims) - 1 and (full or index >= gradient_from):
            # Patch merging into the next stage (a gradient flows through it).
            out, nxt = dims[stage + 1], grids[stage + 1]
            add(f"merge_{stage}", low * batch * (grid.tokens * dim + grid.tokens * out + out * grid.depth_padded_tokens
                                                + 2 * out * nxt.tokens))
    last = batch * grids[-1].tokens
    if full or index >= gradient_from:
        # 1x1 conv input, LayerNorm input and statistics, 3x3 conv input, LayerNorm input and statistics.
        add("neck", low * last * (dims[-1] + 3 * stages.neck_dim) + 4 * FP32 * last)
    # The decoder's necks save their input: the features (already saved by the merges in fp32,
    # autocast copies in bf16) and the contiguous channels-last copy of the neck's output.
    feature_tokens = [batch * grids[s].tokens * dims[s] for s in stages.feature_stages]
    add("neck_inputs", FP32 * last * stages.neck_dim if cast == 0 else cast * (sum(feature_tokens) + last * stages.neck_dim))
    return EncoderMemory(saved, largest_tensor, largest_block, largest_block_tensor, recompute_peak)


def _attention_block_terms(shape: StageShape, config: NetworkConfig, index: int, flows: bool):
    """The FLOP terms of attention block ``index`` (as :func:`encoder_forward_flops`'s)."""
    full = config.trainable == "full"
    dim, tokens, heads, hidden = shape.dim, shape.tokens, shape.heads, shape.hidden
    head_dim, n = dim // heads, shape.window ** 2
    terms = [
        ("encoder_linear", 2 * shape.padded * dim * 4 * dim + 2 * 2 * tokens * dim * hidden, flows, full, 1),
        ("attention", shape.windows * heads * 2 * 2 * n * n * head_dim, flows, False, MASKED_ATTENTION_BACKWARD_FORWARDS),
        ("local_conv", 2 * tokens * dim * DEPTHWISE_DEPTH * 9, flows, full, 1),
    ]
    if index in config.adapter_blocks:
        a = config.adapter_dim
        terms.append(("adapters", 2 * 2 * tokens * dim * a + 2 * tokens * a * DEPTHWISE_DEPTH * 9, flows, True, 1))
    return terms


def checkpoint_recompute_flops(stages: TinyViTStages, config: NetworkConfig, batch: int) -> float:
    """FLOPs that activation checkpointing adds to backward: the forward, again, of every attention
    block with a backward (a gradient flows through it, or its adapter trains), except its last
    matrix product (the adapter's up-projection, else fc2): PyTorch's checkpoint stops once the last
    tensor backward needs is saved again, and that product saves its inputs before it runs."""
    if not config.activation_checkpointing:
        return 0.0
    gradient_from = first_gradient_block(config)
    recomputed, index = 0.0, 0
    for shape in stage_shapes(stages, config, batch)[1:]:
        for _ in range(stages.depths[shape.stage]):
            if index >= gradient_from or index in config.adapter_blocks:  # a backward runs through it
                last = 2 * shape.tokens * shape.dim * (config.adapter_dim if index in config.adapter_blocks else shape.hidden)
                recomputed += sum(term[1] for term in _attention_block_terms(shape, config, index, True)) - last
            index += 1
    return recomputed


def encoder_forward_flops(stages: TinyViTStages, config: NetworkConfig, batch: int) -> list[tuple[str, float, bool, bool, float]]:
    """Every FLOP term of the encoder's forward as (part, flops, input_gradient, weight_gradient,
    backward operands), for :meth:`compute_model.FlopEstimate.add`."""
    full = config.trainable == "full"
    grids = stage_grids(stages, config.patch_size)
    dims = stages.embed_dims
    terms: list[tuple[str, float, bool, bool, float]] = []
    taps = DEPTHWISE_DEPTH * 9
    g0 = grids[0]
    v = batch * g0.tokens
    terms.append(("patch_embedding", 2 * v * (config.in_channels * stages.patch_embed_hidden
                                              + stages.patch_embed_hidden * dims[0]), False, full, 1))
    hidden0 = int(dims[0] * stages.mbconv_expand_ratio)
    for _ in range(stages.depths[0]):
        terms.append(("stem", 2 * v * (2 * dims[0] * hidden0 + hidden0 * taps), full, full, 1))
    gradient_from = first_gradient_block(config)
    index = 0
    for shape in stage_shapes(stages, config, batch):
        stage, dim, tokens = shape.stage, shape.dim, shape.tokens
        if stage > 0:
            for _ in range(stages.depths[stage]):
                terms += _attention_block_terms(shape, config, index, flows=index >= gradient_from)
                index += 1
        if stage < len(dims) - 1:
            out, nxt = dims[stage + 1], grids[stage + 1]
            flows = full or index >= gradient_from
            terms.append(("merge", 2 * tokens * dim * out + 2 * batch * nxt.tokens * (out * taps + out * out),
                          flows and (stage > 0 or full), full, 1))
    last = batch * grids[-1].tokens
    terms.append(("neck", 2 * last * (dims[-1] * stages.neck_dim + stages.neck_dim ** 2 * 9),
                  full or index >= gradient_from, full, 1))
    return terms
