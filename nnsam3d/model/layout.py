"""Shapes of every stage of 3DMedSAM, computed from sizes alone.

The network is built and run on these functions, and the memory model
(:mod:`nnsam3d.model.memory_model`) sums over the very same shapes, so the two cannot drift
apart. The prompt branch of interactive networks is listed layer by layer beside it
(:mod:`nnsam3d.model.prompt_layout`), from these shapes. Everything here is pure integer arithmetic on ``(z, y, x)`` triples: z is the
through-plane axis, (y, x) SAM's image plane.

Vocabulary:

* *token grid*: tokens per axis, ``spatial // token_size``.
* *window*: tokens per attention window per axis; a window larger than the grid on an axis is
  clipped to the grid on that axis (a global block's window is the whole grid).
* *decoder levels*: level 0 is the input resolution, levels 1 and 2 halve every axis (as a
  U-Net's first two poolings; they carry the deep-supervision outputs), deeper levels halve each
  axis still finer than the token grid until the grid is reached. Where tokens are fewer than 4
  voxels deep, levels 2 and beyond are coarser than the grid along that axis: the encoder
  features joining them are average-pooled onto the level (``lateral_input_grid``), so every
  token still reaches the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

Shape3 = tuple[int, int, int]


def token_grid(
    spatial_shape: Shape3,
    token_size: Shape3,
    what: str = "input size",
    remedy: str = "pad or crop the volume",
) -> Shape3:
    """Tokens per axis for a volume of ``spatial_shape`` voxels; raises unless divisible.

    ``what`` names ``spatial_shape`` in the error and ``remedy`` says how to fix it, so that the
    same check reads right for a network input and for a configured patch size."""
    for axis, (size, token) in enumerate(zip(spatial_shape, token_size)):
        if size % token:
            raise ValueError(
                f"{what} {tuple(spatial_shape)} is not a multiple of the token size "
                f"{tuple(token_size)} along axis {axis} (z, y, x); {remedy}"
            )
    return tuple(size // token for size, token in zip(spatial_shape, token_size))


@dataclass(frozen=True)
class WindowLayout:
    """How one attention block splits a token grid into windows.

    window: tokens per window per axis (already clipped to the grid).
    padded_grid: grid after zero-padding each axis up to a multiple of the window (SAM pads
        after ``norm1`` and lets the padding tokens take part in attention; we keep that).
    """

    grid: Shape3
    window: Shape3
    padded_grid: Shape3

    @property
    def tokens_per_window(self) -> int:
        return prod(self.window)

    @property
    def num_windows(self) -> int:
        # A list, not a generator: torch.compile cannot trace prod() of a generator (a graph break per block).
        return prod([p // w for p, w in zip(self.padded_grid, self.window)])

    @property
    def padded_tokens(self) -> int:
        """Tokens per sample after padding (= num_windows * tokens_per_window)."""
        return prod(self.padded_grid)

    @property
    def is_padded(self) -> bool:
        return self.padded_grid != self.grid

    @property
    def padding_ratio(self) -> float:
        """Padded tokens per real token (1.0 without padding): the block's wasted work factor."""
        return prod(self.padded_grid) / prod(self.grid)


def window_layout(grid: Shape3, window: Shape3 | None) -> WindowLayout:
    """Window layout of a block; ``window=None`` means global attention (one window = grid)."""
    if window is None:
        return WindowLayout(grid=tuple(grid), window=tuple(grid), padded_grid=tuple(grid))
    clipped = tuple(min(w, g) for w, g in zip(window, grid))
    padded = tuple(ceil(g / w) * w for g, w in zip(grid, clipped))
    return WindowLayout(grid=tuple(grid), window=clipped, padded_grid=padded)


SDPA_WIDTH_MULTIPLE = 8
"""The widened attention head is zero-padded to a multiple of 8: the fused attention kernels
(CUDA flash / memory-efficient, the CPU flash kernel) want aligned head widths."""


def sdpa_head_width(head_dim: int, window: Shape3) -> int:
    """Head width of the SDPA attention path over a ``window`` box of tokens: the head plus one
    relative-position column per key coordinate along each axis (``Z + H + W``), rounded up to a
    multiple of ``SDPA_WIDTH_MULTIPLE`` (see ``attention3d.Attention3D``)."""
    width = head_dim + sum(window)
    return width + (-width) % SDPA_WIDTH_MULTIPLE


def depth_relative_position_length(grid_z: int, window_z: int | None) -> int:
    """Entries of a block's depth relative-position table: ``2 * w - 1`` for the (clipped)
    depth extent ``w`` of its attention window, ``w = grid_z`` for a global block."""
    extent = grid_z if window_z is None else min(window_z, grid_z)
    return 2 * extent - 1


def hw_relative_position_length(sam_grid: int, sam_window: int, is_global: bool) -> int:
    """Entries of a block's height/width relative-position table: SAM's own length, ``2 * n - 1``
    for its in-plane token grid (global blocks) or window (window blocks). Unlike the depth
    table it does not depend on the configured grid: SAM's table is resized at run time."""
    return 2 * (sam_grid if is_global else sam_window) - 1


STEM_LEVELS = 3
"""The convolutional stem on the input gives skips at levels 0, 1, 2 (full, 1/2, 1/4)."""


def decoder_level_shapes(spatial_shape: Shape3, grid: Shape3) -> list[Shape3]:
    """Voxel shape of every decoder level, from the input resolution to the coarsest.

    Levels 0, 1, 2 are the input shape and ``ceil(s / 2)``, ``ceil(s / 4)`` per axis: the
    full-resolution logits and the two deep-supervision outputs. Then each axis still finer
    than the token grid is halved (never below the grid, never back up) until no axis is finer
    than the grid. With token size (4, 16, 16) and a (32, 128, 128) patch that gives
    (32,128,128), (16,64,64), (8,32,32), (8,16,16), (8,8,8); with token size (2, 8, 8) and the
    demo's (24, 72, 64) patch (grid 12x9x8) (24,72,64), (12,36,32), (6,18,16), (6,9,8): levels
    2 and 3 are coarser than the grid along z, and the features joining them are pooled
    (``lateral_input_grid``).

    Why halve every axis at levels 1 and 2 even where tokens are shallow: levels that stopped
    at the token grid cost 21% more computation per step on the demo's plan and gave the same
    or lower test Dice there over two seeds (model/README.md, "Decoder").
    """
    shapes: list[Shape3] = [tuple(spatial_shape)]
    for _ in range(STEM_LEVELS - 1):
        shapes.append(tuple(ceil(s / 2) for s in shapes[-1]))
    while any(s > g for s, g in zip(shapes[-1], grid)):
        shapes.append(tuple(max(ceil(s / 2), min(g, s)) for s, g in zip(shapes[-1], grid)))
    return shapes


def lateral_input_grid(level_shape: Shape3, grid: Shape3) -> Shape3:
    """Grid an encoder feature is average-pooled to before its lateral convolution joins
    ``level_shape``: the token grid, except along axes where the level is coarser than the grid
    (tokens fewer than 4 voxels deep), where it is the level's size. Pooling, not cropping:
    every token contributes, and pooled voxel ``k`` covers the same input voxels as the level's
    voxel ``k`` (a crop kept the first tokens only and put them at the wrong depth)."""
    return tuple(min(s, g) for s, g in zip(level_shape, grid))


def stem_strides(shapes: list[Shape3]) -> list[Shape3]:
    """Stride per axis of each stem convolution (one per level below ``STEM_LEVELS``): 2 along
    the axes where the level halves the one before it, 1 where it keeps it (level 0: all 1).
    A padded 3x3x3 convolution of stride 2 turns ``s`` voxels into ``ceil(s / 2)``."""
    return [
        (1, 1, 1) if level == 0 else tuple(2 if c < f else 1 for f, c in zip(shapes[level - 1], shapes[level]))
        for level in range(STEM_LEVELS)
    ]


def strided_shape(shape: Shape3, stride: Shape3) -> Shape3:
    """Output shape of a padded 3x3x3 convolution of ``stride`` on ``shape`` voxels."""
    return tuple(ceil(s / t) for s, t in zip(shape, stride))


def integer_upsampling_factor(fine: Shape3, coarse: Shape3) -> Shape3:
    """Kernel/stride of the transposed convolution that takes ``coarse`` towards ``fine``.

    ``fine // coarse`` per axis, at least 1; never longer than ``fine`` when ``fine >= coarse``
    (levels above a coarser level, laterals from ``lateral_input_grid``). Where the ratio is not an integer (odd sizes) the result is then
    resized to ``fine`` (see ``decoder3d.fit_to_shape``); nothing is cropped.
    """
    return tuple(max(1, f // c) for f, c in zip(fine, coarse))


def feature_levels(num_features: int, num_levels: int) -> list[int]:
    """Decoder level that each encoder feature (shallow to deep) joins.

    The deepest feature joins the coarsest level (the token grid), the next ones one level
    finer each, never finer than level 1: vit_b's blocks 3, 6, 9, 12 join 1/2, 1/4, 1/8 and
    the token grid for in-plane tokens of 16.
    """
    coarsest = num_levels - 1
    return [max(1, coarsest - (num_features - 1 - k)) for k in range(num_features)]


def feature_grids(patch_size: Shape3, strides: list[Shape3]) -> list[Shape3]:
    """Token grid of each encoder feature for a patch: ``ceil(patch / stride)`` per axis (a
    padded stride-2 convolution turns ``s`` voxels into ``ceil(s / 2)``)."""
    return [tuple(ceil(p / s) for p, s in zip(patch_size, stride)) for stride in strides]


def decoder_feature_levels(shapes: list[Shape3], grids: list[Shape3], grid: Shape3) -> list[int]:
    """Decoder level each encoder feature joins.

    Features on the network's token grid (SAM's ViTs: every block has the same grid) spread over
    the levels as :func:`feature_levels` says. A hierarchical encoder's features (a TinyViT's
    stages, strides 2 and 4 in-plane) join the finest level (from 1) that is not finer in-plane
    than the feature: a feature of stride 2 joins 1/2, one of stride 4 joins 1/4.
    """
    if all(tuple(g) == tuple(grid) for g in grids):
        return feature_levels(len(grids), len(shapes))
    coarsest = len(shapes) - 1

    def level_of(feature_grid: Shape3) -> int:
        for level in range(1, coarsest):
            if all(s <= g for s, g in zip(shapes[level][1:], feature_grid[1:])):
                return level
        return coarsest

    return [level_of(g) for g in grids]


def level_channels(decoder_channels: tuple[int, ...], level: int) -> int:
    """Width of decoder level ``level``: ``decoder_channels[level]``, the last entry beyond."""
    return decoder_channels[min(level, len(decoder_channels) - 1)]


@dataclass(frozen=True)
class DecoderWidths:
    """Channel widths of the decoder.

    levels: width of every decoder level, finest first.
    stem: widths along the stem, from the input channels to level ``STEM_LEVELS - 1``
        (stem convolution ``i`` maps ``stem[i]`` to ``stem[i + 1]`` channels).
    neck: width of the necks on the encoder tokens (the last ``decoder_channels`` entry).
    """

    levels: tuple[int, ...]
    stem: tuple[int, ...]
    neck: int


def decoder_widths(decoder_channels: tuple[int, ...], in_channels: int, num_levels: int) -> DecoderWidths:
    levels = tuple(level_channels(decoder_channels, level) for level in range(num_levels))
    return DecoderWidths(levels=levels, stem=(in_channels, *levels[:STEM_LEVELS]), neck=decoder_channels[-1])


DEEP_SUPERVISION_LEVELS = (0, 1, 2)
"""Levels with a logits head: full resolution, then the 1/2 and 1/4 deep-supervision outputs."""


def convs_per_level(level: int) -> int:
    """3x3x3 convolutions after the fusion at each level: one at full resolution (the most
    expensive stage, and the input stem already adds one there), two elsewhere."""
    return 1 if level == 0 else 2
