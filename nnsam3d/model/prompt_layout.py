"""The prompt branch's layers, listed once: the network is built from this list, and the memory
and compute models count it.

:class:`~nnsam3d.model.prompt_encoder.PromptEncoder` makes one ``nn.Conv3d`` per
:class:`PromptConv` of :func:`prompt_branch_layout`; :func:`prompt_branch_parameters`,
:func:`prompt_branch_saved_bytes` and :func:`prompt_branch_forward_flops` walk the same list.
Before this list the branch was counted by neither cost model, so interactive plans ran 8-11%
above their memory estimate (issue #22): a layer added here is built and counted at once.

The branch (see :mod:`~nnsam3d.model.prompt_encoder` for why it looks this way):

* ``stem``: one 3x3x3 convolution (with bias, no norm) and an in-place LeakyReLU per level below
  ``STEM_LEVELS``, strided as the decoder's stem, from the prompt channels to the level widths;
* ``pooled``: levels from ``STEM_LEVELS`` on take the last stem output max-pooled to their shape;
* ``projections``: a zero-initialised 1x1x1 convolution per level, to the level's width.

Shapes are the configured patch's (``layout.decoder_level_shapes``), in voxels ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.layout import (
    STEM_LEVELS,
    DecoderWidths,
    Shape3,
    decoder_level_shapes,
    decoder_widths,
    stem_strides,
    strided_shape,
)

FP32 = 4
INDEX = 8  # adaptive max pooling saves int64 indices for its backward


@dataclass(frozen=True)
class PromptConv:
    """A convolution of the branch: ``in_channels -> out_channels``, cubic ``kernel`` (3 or 1),
    ``stride`` per axis, producing ``output_shape`` voxels; all have a bias."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: Shape3
    output_shape: Shape3

    @property
    def weight_elements(self) -> int:
        return self.in_channels * self.out_channels * self.kernel**3

    def forward_flops(self, batch: int) -> float:
        """2 FLOPs per multiply-add: every output voxel, output and input channel, kernel voxel."""
        return 2 * batch * prod(self.output_shape) * self.weight_elements


@dataclass(frozen=True)
class PromptBranchLayout:
    """in_channels: prompt channels ``P``; input_shape: the prompt's voxels; stem: the strided
    convolutions (levels 0 .. STEM_LEVELS-1); pooled: shapes of the levels fed by max pooling;
    projections: one per decoder level, finest first."""

    in_channels: int
    input_shape: Shape3
    stem: tuple[PromptConv, ...]
    pooled: tuple[Shape3, ...]
    projections: tuple[PromptConv, ...]

    @property
    def convolutions(self) -> tuple[PromptConv, ...]:
        return (*self.stem, *self.projections)


def prompt_branch_layout(in_channels: int, widths: DecoderWidths, level_shapes: list[Shape3]) -> PromptBranchLayout:
    """The branch for ``in_channels`` prompt channels and a decoder of ``widths`` over
    ``level_shapes`` (its stem strides as the decoder's stem does, so each term lands on its level)."""
    stem_widths = (in_channels, *widths.levels[:STEM_LEVELS])
    stem, shape = [], tuple(level_shapes[0])
    for level, stride in enumerate(stem_strides(level_shapes)):
        shape = strided_shape(shape, stride)
        stem.append(PromptConv(stem_widths[level], stem_widths[level + 1], 3, tuple(stride), shape))
    pooled = tuple(tuple(s) for s in level_shapes[STEM_LEVELS:])
    sources = [conv.output_shape for conv in stem] + list(pooled)
    projections = tuple(
        PromptConv(widths.levels[min(level, STEM_LEVELS - 1)], widths.levels[level], 1, (1, 1, 1), tuple(source))
        for level, source in enumerate(sources)
    )
    return PromptBranchLayout(in_channels, tuple(level_shapes[0]), tuple(stem), pooled, projections)


def prompt_branch_for(config: NetworkConfig) -> PromptBranchLayout | None:
    """The branch of ``build_network(config)`` at its configured patch; None when not interactive."""
    if not config.prompt_channels:
        return None
    shapes = decoder_level_shapes(config.patch_size, config.token_grid)
    widths = decoder_widths(config.decoder_channels, config.in_channels, len(shapes))
    return prompt_branch_layout(config.prompt_channels, widths, shapes)


@dataclass(frozen=True)
class PromptBranchParameters:
    """Elements: ``total`` (weights and biases, all trainable) and ``matmul_weights`` (the
    convolution weights, of which autocast keeps a low-precision copy)."""

    total: int
    matmul_weights: int


def prompt_branch_parameters(branch: PromptBranchLayout) -> PromptBranchParameters:
    return PromptBranchParameters(
        total=sum(conv.weight_elements + conv.out_channels for conv in branch.convolutions),
        matmul_weights=sum(conv.weight_elements for conv in branch.convolutions),
    )


def prompt_branch_saved_bytes(branch: PromptBranchLayout, batch: int, low: int, cast: int) -> int:
    """Bytes autograd saves in one prompted decode with gradient.

    low: bytes per element of convolution outputs; cast: bytes of autocast's copy of an fp32
    input (0 in fp32). The first convolution saves the prompt (fp32, or its cast copy); each stem
    output is saved once (by its in-place LeakyReLU, and as the input of the next convolution and
    of its projection: one storage); each max pooling saves its int64 indices and its output,
    which the projection saves as input.
    """
    saved = (cast or FP32) * batch * branch.in_channels * prod(branch.input_shape)
    saved += sum(low * batch * conv.out_channels * prod(conv.output_shape) for conv in branch.stem)
    pooled_channels = branch.stem[-1].out_channels
    saved += sum((INDEX + low) * batch * pooled_channels * prod(shape) for shape in branch.pooled)
    return saved


def prompt_branch_forward_flops(branch: PromptBranchLayout, batch: int) -> list[tuple[float, bool]]:
    """``(forward FLOPs, needs an input gradient)`` per convolution: the first one's input is the
    prompt, which needs no gradient; pooling is not a product (no FLOPs)."""
    return [(conv.forward_flops(batch), index > 0) for index, conv in enumerate(branch.convolutions)]
