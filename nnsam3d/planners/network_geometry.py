"""Token size, candidate patch sizes and attention windows of a 3DMedSAM network for a dataset.

Pure functions of the target spacing (mm, z, y, x) and the median image shape (voxels, z, y, x)
at that spacing. The memory-aware choice among the candidates is in ``network_search``.

* Token size: in-plane SAM's 16 voxels, so its patch-embedding kernel is reused as is (8 for
  small images, so that they still hold enough tokens); through-plane a power of two making a
  token about as deep in mm as it is wide, so attention sees roughly isotropic neighbourhoods.
* Patch sizes: a chain of growing patches whose extent in mm is as equal across axes as the
  median shape allows (like nnU-Net's initial patch), multiples of the token size, capped at
  the median shape rounded up to whole tokens.
* Windows: SAM's 14 x 14 tokens in-plane (clipped to the token grid), a few tokens deep.
"""

from __future__ import annotations

import math
from typing import Sequence

from nnsam3d.model.backbones import get_backbone

SAM_IN_PLANE_TOKEN = 16
"""SAM's patch-embedding kernel (voxels); in-plane tokens of this size reuse it unchanged."""

FINE_IN_PLANE_TOKEN = 8
"""In-plane token for small images: SAM's kernel resampled to 8 x 8."""

SMALL_IMAGE_TOKENS = 8
"""An image is small when its median in-plane size holds fewer SAM tokens than this."""

DEPTH_TOKEN_CHOICES = (1, 2, 4, 8, 16)
"""Through-plane token sizes (voxels): powers of two, so that patches stay divisor-friendly."""

MIN_TOKENS_PER_AXIS = 4
"""Fewest tokens per axis in a patch (where the median image is that large): below this the
multi-scale decoder has nothing to pool and windows degenerate."""

SAM_WINDOW = 14
"""SAM's attention window (tokens) in its window blocks."""

MAX_DEPTH_WINDOW = 4
"""Deepest attention window (tokens). A 14 x 14 x 4 window holds 4x SAM's tokens; deeper windows
make window attention as costly as global attention while global blocks already see depth."""


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


def in_plane_token_size(median_shape: Sequence[int]) -> int:
    """16 (SAM's kernel), or 8 when the median in-plane size (voxels) holds fewer than 8 SAM tokens."""
    smallest_in_plane = min(median_shape[1], median_shape[2])
    return FINE_IN_PLANE_TOKEN if smallest_in_plane < SMALL_IMAGE_TOKENS * SAM_IN_PLANE_TOKEN else SAM_IN_PLANE_TOKEN


def depth_token_size(spacing: Sequence[float], in_plane_token: int, median_depth: int) -> int:
    """Through-plane token size (voxels) making a token roughly as deep (mm) as it is wide.

    The ideal size ``in_plane_token * finest in-plane spacing / depth spacing`` is rounded to the
    nearest power of two (in log scale) within 1..16, then halved while the median depth
    (voxels) would hold fewer than ``MIN_TOKENS_PER_AXIS`` tokens.
    """
    ideal = in_plane_token * min(spacing[1], spacing[2]) / spacing[0]
    token = min(DEPTH_TOKEN_CHOICES, key=lambda choice: abs(math.log2(choice) - math.log2(ideal)))
    while token > DEPTH_TOKEN_CHOICES[0] and median_depth < MIN_TOKENS_PER_AXIS * token:
        token //= 2
    return token


def token_size_for(
    spacing: Sequence[float], median_shape: Sequence[int], backbone: str | None = None
) -> tuple[int, int, int]:
    """Voxels per token (z, y, x) for data at ``spacing`` (mm) with ``median_shape`` (voxels).

    A TinyViT backbone (LiteMedSAM) has its own: one slice deep, its last stage's stride in-plane."""
    spec = get_backbone(backbone) if backbone is not None else None
    if spec is not None and spec.is_tiny_vit:
        stride = spec.tiny_vit.stage_strides[-1]
        return (1, stride, stride)
    in_plane = in_plane_token_size(median_shape)
    return (depth_token_size(spacing, in_plane, median_shape[0]), in_plane, in_plane)


def patch_size_cap(median_shape: Sequence[int], token_size: Sequence[int]) -> tuple[int, int, int]:
    """Largest useful patch (voxels): the median shape rounded up to whole tokens."""
    return tuple(_round_up(m, t) for m, t in zip(median_shape, token_size))


def patch_size_path(
    spacing: Sequence[float],
    token_size: Sequence[int],
    median_shape: Sequence[int],
    min_tokens: int = MIN_TOKENS_PER_AXIS,
) -> list[tuple[int, int, int]]:
    """Candidate patch sizes (voxels, z, y, x) from smallest to largest.

    Each patch is at least as large as the previous one along every axis, so any prefix of the
    path is a chain of growing context. Along the path the extent in mm grows at the same rate on
    every axis (a patch of extent L mm holds floor(L / token mm) tokens per axis) until an axis
    reaches the cap (:func:`patch_size_cap`); the smallest patch has ``min_tokens`` tokens per
    axis, or the cap where that is smaller.
    """
    cap_tokens = [c // t for c, t in zip(patch_size_cap(median_shape, token_size), token_size)]
    min_tokens_per_axis = [min(min_tokens, c) for c in cap_tokens]
    token_mm = [t * s for t, s in zip(token_size, spacing)]

    def tokens_at(extent_mm: float) -> tuple[int, ...]:
        # The relative epsilon keeps an extent computed as k * token_mm from flooring to k - 1.
        return tuple(
            min(c, max(lo, math.floor(extent_mm / mm * (1 + 1e-9))))
            for c, lo, mm in zip(cap_tokens, min_tokens_per_axis, token_mm)
        )

    # The patch only changes where some axis gains a whole token: at multiples of a token's mm.
    extents = sorted({k * mm for c, mm in zip(cap_tokens, token_mm) for k in range(1, c + 1)})
    path: list[tuple[int, int, int]] = []
    for tokens in [tuple(min_tokens_per_axis)] + [tokens_at(extent) for extent in extents]:
        patch = tuple(n * t for n, t in zip(tokens, token_size))
        if not path or patch != path[-1]:
            path.append(patch)
    return path


MAX_WINDOW_PADDING_RATIO = 1.25
"""Most padded tokens per real token a window block may process (padding tokens cost as much
attention as real ones, and a corner window of mostly padding is unlike anything SAM saw)."""


def balanced_window(tokens: int, largest: int) -> int:
    """Window (tokens) along one axis of ``tokens`` tokens: the fewest windows of at most
    ``largest`` tokens that cover the axis, made as equal as possible,
    ``ceil(tokens / ceil(tokens / largest))``. ``largest`` itself where it tiles the axis or the
    axis is no longer. The padding is less than one token per window, so the padded/real ratio
    along the axis is below ``1 + 1 / largest`` (1.072 for SAM's 14), and windows hold more
    than ``largest / 2`` tokens per axis."""
    if tokens <= largest:
        return tokens
    return -(-tokens // -(-tokens // largest))


def padding_along(tokens: int, window: int) -> float:
    """Padded/real ratio along one axis."""
    return -(-tokens // window) * window / tokens


def depth_window_size(depth_tokens: int, in_plane_ratio: float = 1.0) -> int:
    """Depth of the attention window (tokens): the grid depth up to ``MAX_DEPTH_WINDOW``; beyond,
    the window of 2..``MAX_DEPTH_WINDOW`` that wastes the least padding (the deeper on ties)
    while the block's padded/real ratio (``in_plane_ratio`` times the depth's) stays within
    ``MAX_WINDOW_PADDING_RATIO``; 1 when none does."""
    if depth_tokens <= MAX_DEPTH_WINDOW:
        return depth_tokens
    fitting = [
        window
        for window in range(MAX_DEPTH_WINDOW, 1, -1)
        if in_plane_ratio * padding_along(depth_tokens, window) <= MAX_WINDOW_PADDING_RATIO
    ]
    return min(fitting, key=lambda window: padding_along(depth_tokens, window), default=1)


def window_size_for(token_grid: Sequence[int]) -> tuple[int, int, int]:
    """Attention window (tokens, z, y, x) for a patch with ``token_grid`` tokens per axis.

    In-plane: SAM's 14 where it tiles the grid (or the grid is smaller), else the balanced
    window (:func:`balanced_window`); then the depth window within the padding budget, so that
    window blocks process at most ``MAX_WINDOW_PADDING_RATIO`` padded tokens per real token."""
    in_plane = tuple(balanced_window(tokens, SAM_WINDOW) for tokens in token_grid[1:])
    in_plane_ratio = padding_along(token_grid[1], in_plane[0]) * padding_along(token_grid[2], in_plane[1])
    return (depth_window_size(token_grid[0], in_plane_ratio), *in_plane)
