"""Prompt branch of interactive 3DMedSAM: click maps and the prior segmentation into the decoder.

The prompt is a dense volume on the network input's grid, ``(B, P, z, y, x)`` with
``P = prompt_channels(num_classes) = 3 * (K - 1)``, channels grouped per foreground class
``k = 1 .. K-1`` (see :func:`prompt_channel`):

* ``prior``: the current segmentation of class k (1 inside, 0 outside);
* ``positive``: balls around the positive clicks for class k (1 at the click, falling off);
* ``negative``: the same for the negative clicks.

A light convolutional stem (no normalisation: click maps are almost everywhere zero, and an
InstanceNorm would blow up their few non-zero voxels) brings the prompt to decoder levels 0, 1
and 2 (full, 1/2, 1/4); coarser levels get the level-2 features max-pooled to their shape (max,
not mean, so that a single click is still seen at the token grid). A zero-initialised 1x1x1
projection per level adds the result to what the level sums (the stem skip, the encoder neck and
the upsampled coarser level). The frozen encoder never sees the prompt, which is what lets its
features be computed once and reused for every click.

Automatic mode is ``prompts=None``: the branch is skipped and the network computes exactly what a
network without it computes. A freshly built branch adds zeros, so an interactive network starts
as the automatic one it extends.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nnsam3d.model.layout import STEM_LEVELS, Shape3
from nnsam3d.model.prompt_layout import PromptBranchLayout

PROMPT_KINDS = ("prior", "positive", "negative")
LEAKY_RELU_SLOPE = 1e-2


def prompt_channels(num_classes: int) -> int:
    """Prompt channels of an interactive network for ``num_classes`` classes (background included)."""
    return len(PROMPT_KINDS) * (num_classes - 1)


def prompt_channel(kind: str, label: int, num_classes: int) -> int:
    """Channel of the prompt of ``kind`` (``prior``/``positive``/``negative``) for foreground class ``label``."""
    if not 1 <= label < num_classes:
        raise ValueError(f"label {label} is not a foreground class of a {num_classes}-class network")
    return PROMPT_KINDS.index(kind) * (num_classes - 1) + (label - 1)


class PromptEncoder(nn.Module):
    """prompts ``(B, P, z, y, x)`` -> one additive term per decoder level (finest first).

    Built from ``branch`` (:func:`nnsam3d.model.prompt_layout.prompt_branch_layout`), the list
    the memory and compute models count: a layer added there is built and counted alike."""

    def __init__(self, branch: PromptBranchLayout):
        super().__init__()
        self.stem = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel, stride=conv.stride,
                          padding=conv.kernel // 2),
                nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
            )
            for conv in branch.stem
        )
        self.projections = nn.ModuleList(
            nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel) for conv in branch.projections
        )
        for projection in self.projections:
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, prompts: Tensor, shapes: list[Shape3]) -> list[Tensor]:
        features = []
        current = prompts
        for conv in self.stem:
            current = conv(current)
            features.append(current)
        coarsest_stem = features[-1]
        for shape in shapes[STEM_LEVELS:]:
            features.append(F.adaptive_max_pool3d(coarsest_stem, tuple(shape)))
        return [projection(feature) for projection, feature in zip(self.projections, features)]
