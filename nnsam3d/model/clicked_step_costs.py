"""What a clicked step of ``nnSAM3DTrainer_interactive`` costs beyond a click-free one.

A clicked step (``trainers/interactive.py``) encodes once, decodes without prompts and for the
simulated user's earlier rounds without gradient, decodes with the prompt and gradient, and adds
a click-weighted cross-entropy to the loss. The memory model (``click_rounds``) and the compute
model (``click_rounds``) read these functions; the prompt branch's own layers come from
:mod:`nnsam3d.model.prompt_layout`.

**Memory.** A click-free step peaks in backward, at the full-resolution decoder tensors
(``memory_model._transient``). A clicked one can peak at the end of the prompted decode's
forward instead: there, besides every saved activation, the terms each level summed and did not
save are still alive (the upsampled coarser level, the laterals, now also the prompt branch's
term, held by the decoder until it returns), with the click-free decode's logits and the
prompted ones. Measured on the CPU (vit_tiny, 16 x 64 x 64, batch 2) that peak is 7-10% above
the click-free step's; the backward peak grows by the prompt and the click-weighted loss only.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.layout import (
    DEEP_SUPERVISION_LEVELS,
    STEM_LEVELS,
    decoder_feature_levels,
    decoder_level_shapes,
    decoder_widths,
    feature_grids,
)

FP32 = 4
INDEX = 8


@dataclass(frozen=True)
class ClickedStepMemory:
    """Bytes live beyond parameters, optimiser state and saved activations, at the two candidate
    peaks of a clicked step.

    backward_extra: added to the click-free step's backward transient: the fp32 prompt (under
        autocast; in fp32 the prompt branch saves the prompt itself) and the click-weighted
        cross-entropy's saved tensors (fp32 log-probabilities, the logits' fp32 copy under
        autocast, int64 labels, the per-voxel weights and losses), all at full resolution.
    forward_end: the whole transient at the end of the prompted decode's forward (see module).
    """

    backward_extra: int
    forward_end: int


def clicked_step_memory(config: NetworkConfig, batch: int, low: int, cast: int) -> ClickedStepMemory:
    """low: bytes per element of convolution outputs; cast: of autocast's copies (0 in fp32)."""
    voxels = batch * prod(config.patch_size)
    prompts = FP32 * config.prompt_channels * voxels if cast else 0
    log_probabilities = (FP32 + (FP32 if cast else 0)) * config.num_classes * voxels
    backward_extra = prompts + log_probabilities + (INDEX + 2 * FP32) * voxels

    shapes = decoder_level_shapes(config.patch_size, config.token_grid)
    widths = decoder_widths(config.decoder_channels, config.in_channels, len(shapes)).levels
    spec = get_backbone(config.backbone)
    grids = feature_grids(config.patch_size, spec.feature_strides(config.token_size))
    laterals = decoder_feature_levels(shapes, grids, config.token_grid)
    unsaved_terms = 0
    for level, shape in enumerate(shapes):
        # Terms: the stem skip (saved by the stem's next convolution), laterals, the prompt term,
        # the upsampled coarser level. The sum is saved by the level's convolution; of the terms
        # only the stem skip is, or the first term when it is summed with nothing else.
        terms = (level < STEM_LEVELS) + laterals.count(level) + 1 + (level + 1 < len(shapes))
        unsaved = terms - (level < STEM_LEVELS) - (terms == 1)
        unsaved_terms += unsaved * low * batch * widths[level] * prod(shape)
    logits = batch * config.num_classes * sum(prod(shapes[level]) for level in DEEP_SUPERVISION_LEVELS)
    # The click-free decode's logits (held by the forward until it returns) and the prompted ones.
    forward_end = prompts + unsaved_terms + 2 * low * logits
    return ClickedStepMemory(backward_extra, forward_end)
