"""The decoder's layers, listed once: :class:`~nnsam3d.model.decoder3d.Decoder3D` builds its
modules from this list, and the memory and compute models count the same list.

Before the list, the network, the memory model and the compute model each wrote the decoder's
layers out for themselves (issue #22), so a layer changed in one place was miscounted in the
others; the prompt branch has its own list beside it (:mod:`nnsam3d.model.prompt_layout`).

Kinds, in the order the decoder registers them (which fixes the order of its random
initialisation, so checkpoints and seeded results do not change):

* ``neck``: per encoder feature block, ``Linear(dim, neck)`` on the tokens, InstanceNorm, LeakyReLU;
* ``lateral``: per block, a transposed convolution (kernel = stride) from its (pooled) token grid
  to the decoder level it joins;
* ``stem``: conv-norm-act on the input, then strided ones (skips at levels 0, 1, 2);
* ``upsampler``: per level but the coarsest, a transposed convolution from the next coarser level;
* ``conv``: the 3x3x3 conv-norm-act blocks of each level after the fusion;
* ``head``: 1x1x1 convolutions to the logits at the deep-supervision levels.

Shapes are voxels (or tokens for necks) ``(z, y, x)``; see :mod:`nnsam3d.model.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.layout import (
    DEEP_SUPERVISION_LEVELS,
    DecoderWidths,
    Shape3,
    convs_per_level,
    decoder_feature_levels,
    decoder_level_shapes,
    decoder_widths,
    feature_grids,
    integer_upsampling_factor,
    lateral_input_grid,
    stem_strides,
    strided_shape,
)

KINDS = ("neck", "lateral", "stem", "upsampler", "conv", "head")
_NORMED = ("neck", "stem", "conv")
"""Kinds followed by InstanceNorm and LeakyReLU; at full resolution the stem's and level 0's
convolutions may go without the norm (``NetworkConfig.norm_at_full_resolution``)."""
_TRANSPOSED = ("lateral", "upsampler")


@dataclass(frozen=True)
class DecoderLayer:
    """One learned layer. index: the feature block (necks, laterals) or the level (others);
    level: the decoder level its output joins (a neck: its lateral's)."""

    kind: str
    index: int
    level: int
    in_channels: int
    out_channels: int
    kernel: Shape3
    stride: Shape3
    input_shape: Shape3
    output_shape: Shape3
    normed: bool = False
    """Followed by InstanceNorm (affine) and LeakyReLU."""

    @property
    def activated(self) -> bool:
        """Followed by LeakyReLU (the normed layers, and the stem's and level's convolutions that
        go without a norm)."""
        return self.kind in _NORMED

    @property
    def biased(self) -> bool:
        """Has a bias: necks' linear layers, heads, and activated convolutions without a norm (a
        norm would remove the bias)."""
        return self.kind in ("neck", "head") or (self.activated and not self.normed)

    @property
    def weight_elements(self) -> int:
        return self.in_channels * self.out_channels * prod(self.kernel)

    @property
    def parameters(self) -> int:
        """Weight, bias and the norm's affine pair."""
        return (self.weight_elements + (self.out_channels if self.biased else 0)
                + (2 * self.out_channels if self.normed else 0))

    def forward_flops(self, batch: int) -> float:
        """2 FLOPs per multiply-add. A transposed convolution with kernel = stride reaches each
        output voxel from one input voxel: ``in x out`` multiply-adds per output voxel."""
        per_voxel = self.in_channels * self.out_channels * (1 if self.kind in _TRANSPOSED else prod(self.kernel))
        return 2 * batch * prod(self.output_shape) * per_voxel


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder of one configuration: its layers and the level geometry they come from."""

    layers: tuple[DecoderLayer, ...]
    shapes: list[Shape3]
    widths: DecoderWidths
    feature_levels: list[int]

    def of(self, kind: str, index: int | None = None) -> list[DecoderLayer]:
        """The layers of ``kind`` (and ``index``), in order."""
        return [layer for layer in self.layers if layer.kind == kind and (index is None or layer.index == index)]


def decoder_layout(config: NetworkConfig, feature_dims: tuple[int, ...], feature_strides: list[Shape3]) -> DecoderLayout:
    """The layers of the decoder for ``config`` and an encoder whose feature blocks have widths
    ``feature_dims`` and voxels per token ``feature_strides`` (``BackboneSpec``)."""
    grid = config.token_grid
    shapes = decoder_level_shapes(config.patch_size, grid)
    widths = decoder_widths(config.decoder_channels, config.in_channels, len(shapes))
    channels, neck = widths.levels, widths.neck
    grids = feature_grids(config.patch_size, feature_strides)
    levels = decoder_feature_levels(shapes, grids, grid)
    ones = (1, 1, 1)

    def normed_at(level: int) -> bool:
        return level > 0 or config.norm_at_full_resolution

    layers = [DecoderLayer("neck", index, level, dim, neck, ones, ones, feature_grid, feature_grid, normed=True)
              for index, (level, dim, feature_grid) in enumerate(zip(levels, feature_dims, grids))]
    for index, (level, feature_grid) in enumerate(zip(levels, grids)):
        pooled = lateral_input_grid(shapes[level], feature_grid)
        factor = integer_upsampling_factor(shapes[level], pooled)
        layers.append(DecoderLayer("lateral", index, level, neck, channels[level], factor, factor, pooled,
                                   tuple(p * f for p, f in zip(pooled, factor))))
    stem_input = tuple(config.patch_size)
    for level, stride in enumerate(stem_strides(shapes)):
        output = strided_shape(stem_input, stride)
        layers.append(DecoderLayer("stem", level, level, widths.stem[level], widths.stem[level + 1], (3, 3, 3),
                                   stride, stem_input, output, normed=normed_at(level)))
        stem_input = output
    for level in range(len(shapes) - 1):
        factor = integer_upsampling_factor(shapes[level], shapes[level + 1])
        layers.append(DecoderLayer("upsampler", level, level, channels[level + 1], channels[level], factor, factor,
                                   shapes[level + 1], tuple(s * f for s, f in zip(shapes[level + 1], factor))))
    for level, shape in enumerate(shapes):
        layers.extend(DecoderLayer("conv", level, level, channels[level], channels[level], (3, 3, 3), ones, shape, shape,
                                   normed=normed_at(level)) for _ in range(convs_per_level(level)))
    layers.extend(DecoderLayer("head", level, level, channels[level], config.num_classes, ones, ones,
                               shapes[level], shapes[level]) for level in DEEP_SUPERVISION_LEVELS)
    return DecoderLayout(tuple(layers), shapes, widths, levels)
