"""The 3D image encoder: SAM's ViT with 3D tokens, 3D windows and 3D adapters.

Same blocks, names and (for SAM's own parameters) shapes as ``segment_anything``'s
``ImageEncoderViT``, so that SAM's state dict loads after
:func:`~nnsam3d.model.weight_adaptation.adapt_sam_encoder_state`. SAM's neck is not built: the
3D decoder reads the tokens of several blocks through its own necks.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from nnsam3d.model.adapters import Adapter3D
from nnsam3d.model.attention3d import Attention3D, window_partition_3d, window_unpartition_3d
from nnsam3d.model.backbones import BackboneSpec
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.layout import (
    Shape3,
    depth_relative_position_length,
    hw_relative_position_length,
    window_layout,
)
from nnsam3d.model.patch_embedding import PatchEmbedding3D
from nnsam3d.model.weight_adaptation import resize_absolute_position_embedding, resize_table_1d

LAYER_NORM_EPS = 1e-6  # SAM's

FUSED_ATTENTION_KERNELS = tuple(
    getattr(torch.ops.aten, name).default
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name)
)
"""The kernels ``scaled_dot_product_attention`` dispatches to on CUDA and the CPU: a block that
keeps its attention (``kept_attention_blocks``) stores their outputs through checkpointing."""


def _keep_fused_attention(context, operation, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if operation in FUSED_ATTENTION_KERNELS else CheckpointPolicy.PREFER_RECOMPUTE


KEEP_ATTENTION = partial(create_selective_checkpoint_contexts, _keep_fused_attention)
"""``context_fn`` of a checkpointed block that recomputes everything but its fused attention."""


class MLP(nn.Module):
    """SAM's ``MLPBlock`` (``lin1``, GELU, ``lin2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class EncoderBlock3D(nn.Module):
    """SAM's transformer block on a 3D token grid.

    window: tokens per window ``(wz, wh, ww)``, clipped to the grid at run time; None for a
        global block (attention over all tokens).
    adapter_dim: bottleneck of the 3D adapter, None for no adapter.

    forward: ``(B, Z, H, W, D) -> (B, Z, H, W, D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window: Shape3 | None,
        rel_pos_length_hw: int,
        rel_pos_length_depth: int,
        adapter_dim: int | None,
    ):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention3D(dim, num_heads, rel_pos_length_hw, rel_pos_length_depth)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.adapter = Adapter3D(dim, adapter_dim) if adapter_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        grid = tuple(x.shape[1:4])
        layout = window_layout(grid, self.window)
        shortcut = x
        x = self.norm1(x)
        if layout.num_windows > 1 or layout.is_padded:
            windows, padded = window_partition_3d(x, layout.window)
            x = window_unpartition_3d(self.attn(windows), layout.window, padded, grid)
        else:
            x = self.attn(x)
        x = shortcut + x
        hidden = self.norm2(x)
        update = self.mlp(hidden)
        if self.adapter is not None:
            update = update + self.adapter(hidden)
        return x + update


class Encoder3D(nn.Module):
    """3D patch embedding, positions, SAM's blocks; returns the tokens of the feature blocks.

    Parameters beyond SAM's: ``depth_pos_embed`` ``(1, Lz, 1, 1, D)`` (zero-initialised, Lz =
    depth of the configured token grid, resized to the actual depth at run time), each
    attention's ``rel_pos_d`` and the adapters. ``pos_embed`` keeps SAM's ``(1, 64, 64, D)``
    shape and is resized to the in-plane token grid in :meth:`embed`.

    forward: ``(B, C, Z, Y, X)`` -> list of ``(B, Z/tz, Y/ty, X/tx, D)``, one per feature block
    (``BackboneSpec.feature_blocks``, shallow to deep).
    """

    def __init__(self, spec: BackboneSpec, config: NetworkConfig):
        super().__init__()
        dim = spec.embed_dim
        grid = config.token_grid
        sam_grid = spec.sam_grid_size
        self.feature_blocks = tuple(spec.feature_blocks)
        self.checkpointed = tuple(config.is_checkpointed(index) for index in range(spec.depth))
        self.kept_attention = tuple(index in config.kept_attention_blocks for index in range(spec.depth))
        self.patch_embed = PatchEmbedding3D(config.in_channels, dim, config.token_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, sam_grid, sam_grid, dim))
        self.depth_pos_embed = nn.Parameter(torch.zeros(1, grid[0], 1, 1, dim))
        self.blocks = nn.ModuleList()
        for index in range(spec.depth):
            is_global = index in spec.global_attn_indexes
            window = None if is_global else config.window_size
            self.blocks.append(
                EncoderBlock3D(
                    dim=dim,
                    num_heads=spec.num_heads,
                    mlp_ratio=spec.mlp_ratio,
                    window=window,
                    rel_pos_length_hw=hw_relative_position_length(sam_grid, spec.sam_window_size, is_global),
                    rel_pos_length_depth=depth_relative_position_length(
                        grid[0], None if is_global else window[0]
                    ),
                    adapter_dim=config.adapter_dim if index in config.adapter_blocks else None,
                )
            )

    def init_from_scratch(self) -> None:
        """Initialisation for training without SAM weights (ViT practice: truncated normal
        0.02 for projections and the in-plane position embedding; adapters' last projection
        stays zero)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("adapter.up"):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding plus positions: ``(B, C, Z, Y, X) -> (B, Z', H, W, D)`` tokens."""
        tokens = self.patch_embed(x)
        depth, height, width, dim = tokens.shape[1:]
        in_plane = resize_absolute_position_embedding(self.pos_embed, (height, width))
        through_plane = resize_table_1d(self.depth_pos_embed.view(-1, dim), depth)
        return tokens + in_plane[:, None] + through_plane.view(1, depth, 1, 1, dim)

    def forward(self, x: Tensor) -> list[Tensor]:
        tokens = self.embed(x)
        features = []
        for index, block in enumerate(self.blocks):
            if self.checkpointed[index] and torch.is_grad_enabled():
                if self.kept_attention[index]:
                    tokens = checkpoint(block, tokens, use_reentrant=False, context_fn=KEEP_ATTENTION)
                else:
                    tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in self.feature_blocks:
                features.append(tokens)
        return features

NEW_3D_PARAMETERS = ("patch_embed.", "depth_pos_embed", ".rel_pos_d", ".adapter.")
"""Name fragments of the encoder parameters SAM does not provide (or provides only in 2D): they
are trained in the ``adapters`` and ``frozen_encoder`` modes."""


def is_new_3d_parameter(name: str) -> bool:
    return any(fragment in f".{name}" for fragment in NEW_3D_PARAMETERS)
