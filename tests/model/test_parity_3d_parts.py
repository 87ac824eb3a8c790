"""The 3D parts against a plain, independent reference, with every 3D part switched on.

The identical-slices SAM parity (``test_parity_with_sam.py``) runs with zero adapters, zero depth
terms and SAM's 64 x 64 grid, so it cannot see an adapter reading the wrong tensor, a depth table
applied along the wrong axis or a wrong position-embedding resize. Here the adapters, depth
tables and depth position embedding are random and non-zero, the token grid is 3 x 5 x 6 (so
SAM's 64 x 64 absolute embedding and its relative tables are resized), and every block is
compared with a reference written plainly below from segment-anything's own block parts:
its LayerNorms, qkv/proj and MLP, its ``get_rel_pos`` for the table resize, an O(N^2)
attention that builds every query/key bias from token coordinates, 3D windows cut with Python
slicing, and the adapter as explicit functional calls.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network
from nnsam3d.model.sam_reference import import_sam_modeling

GRID = (3, 5, 6)
TOKEN = (2, 16, 16)
WINDOW = (2, 3, 4)


def plain_attention(x, sam_attention, rel_pos_d, num_heads):
    """Multi-head attention over all tokens of ``x`` ``(Z, H, W, D)`` (one window), with the 3D
    decomposed relative-position bias built pair by pair from coordinates."""
    get_rel_pos = import_sam_modeling().image_encoder.get_rel_pos
    grid = x.shape[:3]
    tokens = x.reshape(-1, x.shape[-1])
    coordinates = torch.tensor(list(itertools.product(*(range(n) for n in grid))))  # (N, 3), row-major
    q, k, v = sam_attention.qkv(tokens).reshape(len(tokens), 3, num_heads, -1).permute(1, 2, 0, 3)
    head_dim = q.shape[-1]
    logits = (q @ k.transpose(-1, -2)) * head_dim**-0.5  # (heads, N, N)
    for axis, table in enumerate((rel_pos_d, sam_attention.rel_pos_h, sam_attention.rel_pos_w)):
        per_pair = get_rel_pos(grid[axis], grid[axis], table)  # (L, L, C): [query coord, key coord]
        pair_tables = per_pair[coordinates[:, axis][:, None], coordinates[:, axis][None, :]]  # (N, N, C)
        logits = logits + torch.einsum("hqc,qkc->hqk", q, pair_tables)
    out = logits.softmax(dim=-1) @ v  # (heads, N, C)
    out = out.permute(1, 0, 2).reshape(len(tokens), -1)
    return sam_attention.proj(out).reshape(x.shape)


def plain_adapter(x, adapter):
    """``up(GELU(depthwise 3x3x3 conv(down(x))))`` on ``(Z, H, W, D)``."""
    hidden = F.linear(x, adapter.down.weight, adapter.down.bias).permute(3, 0, 1, 2)[None]
    hidden = F.conv3d(hidden, adapter.conv.weight, adapter.conv.bias, padding=1, groups=hidden.shape[1])
    hidden = F.gelu(hidden)[0].permute(1, 2, 3, 0)
    return F.linear(hidden, adapter.up.weight, adapter.up.bias)


def plain_block(x, sam_block, our_block, window, num_heads):
    """SAM's block on a 3D grid ``x`` ``(Z, H, W, D)``: windows (zero-padded after norm1, as SAM
    pads in-plane) or global attention, then the MLP plus the adapter."""
    grid = x.shape[:3]
    normalised = sam_block.norm1(x)
    if window is None:
        attended = plain_attention(normalised, sam_block.attn, our_block.attn.rel_pos_d, num_heads)
    else:
        window = [min(w, n) for w, n in zip(window, grid)]
        padded_grid = [-(-n // w) * w for n, w in zip(grid, window)]
        padded = x.new_zeros(*padded_grid, x.shape[-1])
        padded[: grid[0], : grid[1], : grid[2]] = normalised
        attended = torch.zeros_like(padded)
        for z, h, w in itertools.product(*(range(0, p, s) for p, s in zip(padded_grid, window))):
            box = (slice(z, z + window[0]), slice(h, h + window[1]), slice(w, w + window[2]))
            attended[box] = plain_attention(padded[box], sam_block.attn, our_block.attn.rel_pos_d, num_heads)
        attended = attended[: grid[0], : grid[1], : grid[2]]
    x = x + attended
    hidden = sam_block.norm2(x)
    return x + sam_block.mlp(hidden) + plain_adapter(hidden, our_block.adapter)


def plain_embedding(volume, network, sam_encoder):
    """Our patch embedding (tested on its own in test_weight_adaptation) plus SAM's absolute
    embedding resized bicubically to the in-plane grid (ViTDet's rule) plus the depth embedding."""
    tokens = network.encoder.patch_embed(volume)[0]  # (Z, H, W, D)
    in_plane = F.interpolate(sam_encoder.pos_embed.permute(0, 3, 1, 2), size=GRID[1:], mode="bicubic",
                             align_corners=False)[0].permute(1, 2, 0)
    return tokens + in_plane[None] + network.encoder.depth_pos_embed[0]


def test_blocks_with_random_adapters_depth_tables_and_resized_positions_match_the_plain_reference(sam_checkpoint):
    path, sam = sam_checkpoint("vit_tiny")
    sam_encoder = sam.image_encoder
    config = NetworkConfig(
        backbone="vit_tiny", in_channels=1, num_classes=2, patch_size=tuple(t * g for t, g in zip(TOKEN, GRID)),
        token_size=TOKEN, window_size=WINDOW, adapter_blocks=(0, 1, 2, 3), adapter_dim=8,
    )
    network = build_network(config, sam_checkpoint=path).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in network.encoder.named_parameters():
            if "adapter" in name or "rel_pos_d" in name or "depth_pos_embed" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    volume = torch.randn(1, 1, *config.patch_size, generator=generator)
    num_heads = network.encoder.blocks[0].attn.num_heads

    with torch.no_grad():
        expected = plain_embedding(volume, network, sam_encoder)
        actual = network.encoder.embed(volume)[0]
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
        for index, (ours, theirs) in enumerate(zip(network.encoder.blocks, sam_encoder.blocks)):
            window = None if theirs.window_size == 0 else WINDOW
            adapter_term = plain_adapter(theirs.norm2(expected), ours.adapter)
            assert adapter_term.abs().max() > 1e-2  # the adapters really contribute
            expected = plain_block(expected, theirs, ours, window, num_heads)
            actual = ours(actual[None])[0]
            error = ((actual - expected).norm() / expected.norm()).item()
            assert error < 1e-5, (index, error)


def test_the_reference_sees_a_wrongly_wired_depth_table(sam_checkpoint):
    """The comparison above can fail: a depth table moved to the height axis is caught."""
    path, sam = sam_checkpoint("vit_tiny")
    config = NetworkConfig(
        backbone="vit_tiny", patch_size=tuple(t * g for t, g in zip(TOKEN, GRID)), token_size=TOKEN,
        window_size=WINDOW, adapter_blocks=(1,), adapter_dim=8,
    )
    network = build_network(config, sam_checkpoint=path).eval()
    block, sam_block = network.encoder.blocks[1], sam.image_encoder.blocks[1]  # a global block
    with torch.no_grad():
        block.attn.rel_pos_d.normal_(generator=torch.Generator().manual_seed(2))
        block.adapter.up.weight.normal_(generator=torch.Generator().manual_seed(3))
        x = torch.randn(*GRID, 96, generator=torch.Generator().manual_seed(4))
        reference = plain_block(x, sam_block, block, None, block.attn.num_heads)
        torch.testing.assert_close(block(x[None])[0], reference, rtol=1e-5, atol=1e-5)
        swapped = torch.nn.Parameter(block.attn.rel_pos_d.detach().clone())
        block.attn.rel_pos_d, block.attn.rel_pos_h = block.attn.rel_pos_h, swapped
        assert not torch.allclose(block(x[None])[0], reference, rtol=1e-3, atol=1e-3)
