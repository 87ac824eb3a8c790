"""3D multi-head attention with decomposed relative positions, and 3D window partitioning.

SAM's attention (``segment_anything/modeling/image_encoder.py``) extended by one axis: tokens
are laid out ``(B, Z, H, W, D)``, windows are boxes of ``(wz, wh, ww)`` tokens, and the
decomposed relative-position bias gets a depth term next to SAM's height and width terms:
``attn[q, k] += q . R_z[q_z - k_z] + q . R_h[q_h - k_h] + q . R_w[q_w - k_w]``. It runs through
``scaled_dot_product_attention`` with the bias carried exactly in a widened head (see
:class:`Attention3D`), the explicit N x N path kept as the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnsam3d.model.layout import Shape3, sdpa_head_width
from nnsam3d.model.weight_adaptation import relative_position_embeddings


def window_partition_3d(tokens: Tensor, window: Shape3) -> tuple[Tensor, Shape3]:
    """Split ``(B, Z, H, W, D)`` tokens into ``(B * num_windows, wz, wh, ww, D)`` windows.

    Axes are zero-padded at their end up to a multiple of the window, as SAM does in-plane
    (the padding tokens then take part in attention like any other token). Returns the windows
    and the padded grid ``(Zp, Hp, Wp)``.
    """
    batch, *grid, dim = tokens.shape
    padding = [(-size) % w for size, w in zip(grid, window)]
    if any(padding):
        # F.pad lists the last axis first: (D), (W), (H), (Z).
        tokens = F.pad(tokens, (0, 0, 0, padding[2], 0, padding[1], 0, padding[0]))
    padded = tuple(size + pad for size, pad in zip(grid, padding))
    (wz, wh, ww), (zp, hp, wp) = window, padded
    windows = tokens.view(batch, zp // wz, wz, hp // wh, wh, wp // ww, ww, dim)
    windows = windows.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wz, wh, ww, dim)
    return windows, padded


def window_unpartition_3d(windows: Tensor, window: Shape3, padded: Shape3, grid: Shape3) -> Tensor:
    """Inverse of :func:`window_partition_3d`: windows back to ``(B, Z, H, W, D)``, padding removed."""
    (wz, wh, ww), (zp, hp, wp) = window, padded
    dim = windows.shape[-1]
    batch = windows.shape[0] // ((zp // wz) * (hp // wh) * (wp // ww))
    tokens = windows.view(batch, zp // wz, hp // wh, wp // ww, wz, wh, ww, dim)
    tokens = tokens.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, zp, hp, wp, dim)
    if padded != tuple(grid):
        tokens = tokens[:, : grid[0], : grid[1], : grid[2]].contiguous()
    return tokens


def relative_position_logits(queries: Tensor, embeddings: Tensor, axis: int) -> Tensor:
    """Decomposed relative-position term along one axis.

    queries: ``(B', Z, H, W, C)``; embeddings: ``(L_axis, K_axis, C)`` from
    :func:`relative_position_embeddings` for that axis (``axis`` 0, 1, 2 = z, h, w).
    Returns ``(B', Z, H, W, K_axis)``: ``out[..., k] = q . embeddings[q_axis, k]``.

    Written as one batched matrix product over the query position along ``axis`` (what
    SAM's einsum computes), so that what autograd saves is plain: the moved query copy when the
    table trains, the embeddings when the queries need a gradient.
    """
    moved = queries.movedim(axis + 1, 0)  # (L, B', a, b, C)
    length, *rest, channels = moved.shape
    products = torch.bmm(moved.reshape(length, -1, channels), embeddings.transpose(1, 2))
    return products.view(length, *rest, -1).movedim(0, axis + 1)


def one_hot_key_coordinates(grid: Shape3, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(N, Z + H + W)`` one-hot coordinates of the ``N = Z * H * W`` keys of a box, row-major:
    key ``(z, h, w)`` has ones at columns ``z``, ``Z + h`` and ``Z + H + w``."""
    columns = [
        F.one_hot(torch.arange(size, device=device), size).to(dtype)
        .view(*[size if axis == a else 1 for a in range(3)], size)
        .expand(*grid, size)
        for axis, size in enumerate(grid)
    ]
    return torch.cat(columns, dim=-1).reshape(-1, sum(grid))


class Attention3D(nn.Module):
    """Multi-head self-attention over a box of tokens with 3D decomposed relative positions.

    Parameter names and the h/w table shapes are SAM's, so SAM's weights load unchanged.

    dim: embedding width D; num_heads: heads (D divisible by it).
    rel_pos_length_hw: entries of SAM's height/width tables (``2 * 14 - 1`` for window blocks,
        ``2 * 64 - 1`` for global blocks); resized to what a window needs at run time.
    rel_pos_length_depth: entries of the new depth table (``2 * wz - 1``), zero-initialised.

    Two exact ways to compute the same thing (``use_sdpa``):

    * SDPA (default): ``torch.nn.functional.scaled_dot_product_attention`` on a widened head.
      With ``r_a[q, j] = q . R_a[q_a - j]`` (one column per key coordinate ``j`` along axis
      ``a``), the query becomes ``[scale * q, r_z, r_h, r_w]`` and the key
      ``[k, onehot(k_z), onehot(k_h), onehot(k_w)]``, so that their product is
      ``scale * q . k + r_z[q, k_z] + r_h[q, k_h] + r_w[q, k_w]``, SAM's biased logit, without
      an N x N bias (SDPA then runs at scale 1). Head width ``head_dim + Z + H + W``,
      zero-padded to a multiple of 8 (``layout.sdpa_head_width``); v is zero-padded to the same
      width, which the CPU's fused kernel and CUDA's flash kernel require. The fused kernels
      keep no N x N map: backward recomputes it block by block.
    * Explicit (the reference): the full N x N map, the bias added in place, softmax, @ v.
    """

    use_sdpa: bool = True

    def __init__(self, dim: int, num_heads: int, rel_pos_length_hw: int, rel_pos_length_depth: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_length_hw, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_length_hw, head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(rel_pos_length_depth, head_dim))

    def relative_position_terms(self, q: Tensor, grid: Shape3) -> list[Tensor]:
        """``r_z, r_h, r_w``: ``(B' * heads, Z, H, W, K_axis)`` for queries ``(B' * heads, N, C)``."""
        queries = q.view(q.shape[0], *grid, -1)
        return [
            relative_position_logits(queries, relative_position_embeddings(grid[axis], grid[axis], table), axis)
            for axis, table in enumerate((self.rel_pos_d, self.rel_pos_h, self.rel_pos_w))
        ]

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B', Z, H, W, D)`` (one window per batch entry) -> same shape."""
        batch, depth, height, width, dim = x.shape
        tokens = depth * height * width
        grid = (depth, height, width)
        # (3, B', heads, N, head_dim) in one contiguous buffer whatever the batch size, so that
        # the tensors autograd saves (and the memory model counts) do not depend on it.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.contiguous().view(3, batch * self.num_heads, tokens, -1).unbind(0)
        attend = self._attend_sdpa if self.use_sdpa else self._attend_explicit
        out = attend(q, k, v, grid).view(batch, self.num_heads, depth, height, width, -1)
        out = out.permute(0, 2, 3, 4, 1, 5).reshape(batch, depth, height, width, dim)
        return self.proj(out)

    def _attend_sdpa(self, q: Tensor, k: Tensor, v: Tensor, grid: Shape3) -> Tensor:
        """q, k, v ``(B' * heads, N, C)`` -> ``(B' * heads, N, C)`` through SDPA (see the class)."""
        heads, tokens, channels = q.shape
        terms = [term.reshape(heads, tokens, -1) for term in self.relative_position_terms(q, grid)]
        keys = one_hot_key_coordinates(grid, k.dtype, k.device).expand(heads, tokens, -1)
        padding = sdpa_head_width(channels, grid) - channels - sum(grid)
        if padding:
            terms.append(q.new_zeros(heads, tokens, padding))
            keys = torch.cat([keys, keys.new_zeros(heads, tokens, padding)], dim=-1)
        query = torch.cat([q * self.scale, *terms], dim=-1)
        key = torch.cat([k, keys], dim=-1)
        value = F.pad(v, (0, query.shape[-1] - channels))
        # 4D (batch, heads, N, width): the layout the CPU's fused kernel accepts.
        out = F.scaled_dot_product_attention(query[None], key[None], value[None], scale=1.0)
        return out[0, ..., :channels]

    def _attend_explicit(self, q: Tensor, k: Tensor, v: Tensor, grid: Shape3) -> Tensor:
        """The reference: q, k, v ``(B' * heads, N, C)`` -> ``(B' * heads, N, C)`` through the
        explicit N x N map."""
        # In-place scaling and bias: the product's own buffer is not needed for backward, so
        # the N x N map exists once instead of three times at the peak.
        attn = (q @ k.transpose(-2, -1)).mul_(self.scale)
        biased = attn.view(-1, *grid, *grid)
        for axis, logits in enumerate(self.relative_position_terms(q, grid)):
            shape = [1, 1, 1]
            shape[axis] = grid[axis]
            biased.add_(logits.view(*logits.shape[:4], *shape))
        return attn.softmax(dim=-1) @ v
