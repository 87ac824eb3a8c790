"""Clicks and a prior segmentation → the prompt volume of an interactive network.

Used the same way by the interactive session (on sliding-window tiles) and by the interactive
trainer (on training patches), so that the network sees at prediction exactly the encoding it
was trained on. Channel layout: :mod:`nnsam3d.model.prompt_encoder`.

A click is a point on the network grid (voxel coordinates ``(z, y, x)``, continuous). It is
drawn as a Gaussian ball, ``exp(-d^2 / 2 sigma^2)`` with ``d`` in millimetres and
``sigma = CLICK_SIGMA_VOXELS`` voxels of the finest axis, cut at ``3 sigma``: physically round
on anisotropic grids, and a few voxels wide so that the decoder's 3x3x3 convolutions see it at
levels 0 to 2. Balls of several clicks of one kind and class add up, so that a click repeated
where the last one did not fix the error pushes harder: with balls combined by maximum a
repeated click left the prompt unchanged, and the simulated user, who clicks the centre of the
largest error, was stuck on it (on the demo, 5 clicks gained the lesion +0.038 Dice over the
automatic model; adding, +0.054, mean of two seeds; ``benchmarks/interactive_vs_automatic.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels

CLICK_SIGMA_VOXELS = 2.0
CLICK_CUTOFF_SIGMAS = 3.0


@dataclass(frozen=True)
class Click:
    """label: foreground class value; position: network-grid voxel (z, y, x); positive: add (True) or remove.
    image_voxel: the canonical input-image voxel (z, y, x) the user clicked, where a session knows
    it (the label it must carry there); None for clicks simulated on patches."""

    label: int
    position: tuple[float, float, float]
    positive: bool
    image_voxel: tuple[int, int, int] | None = None


def click_sigma_voxels(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Ball sigma per axis (voxels) on a grid of ``spacing`` (mm, z, y, x)."""
    sigma_mm = CLICK_SIGMA_VOXELS * min(spacing)
    return tuple(sigma_mm / s for s in spacing)


def draw_click(volume: torch.Tensor, position: Sequence[float], sigma: Sequence[float]) -> None:
    """Add the ball at ``position`` (voxels, may lie outside) to ``volume`` (z, y, x), in place."""
    shape = volume.shape
    slices, offsets = [], []
    for axis in range(3):
        reach = CLICK_CUTOFF_SIGMAS * sigma[axis]
        lo = max(0, math.floor(position[axis] - reach))
        hi = min(shape[axis], math.ceil(position[axis] + reach) + 1)
        if lo >= hi:
            return  # the ball does not reach this volume
        coordinates = torch.arange(lo, hi, dtype=torch.float32, device=volume.device)
        offsets.append(((coordinates - position[axis]) / sigma[axis]) ** 2)
        slices.append(slice(lo, hi))
    squared = offsets[0][:, None, None] + offsets[1][None, :, None] + offsets[2][None, None, :]
    ball = torch.exp(-0.5 * squared).to(volume.dtype)
    ball[squared > CLICK_CUTOFF_SIGMAS**2] = 0
    region = volume[tuple(slices)]
    region += ball


def build_prompts(
    prior: torch.Tensor,
    clicks: Sequence[Click],
    num_classes: int,
    spacing: Sequence[float],
    origin: Sequence[int] = (0, 0, 0),
) -> torch.Tensor:
    """The prompt of one tile or patch.

    prior: (z, y, x) integer label map of the tile (the current segmentation).
    clicks: in the coordinates of the whole grid; ``origin`` is the tile's first voxel there.
    spacing: mm per voxel (z, y, x) of the network grid.
    Returns (P, z, y, x) float32 on ``prior``'s device, ``P = prompt_channels(num_classes)``.
    """
    prompts = torch.zeros((prompt_channels(num_classes), *prior.shape), dtype=torch.float32, device=prior.device)
    for label in range(1, num_classes):
        prompts[prompt_channel("prior", label, num_classes)] = prior == label
    sigma = click_sigma_voxels(spacing)
    for click in clicks:
        channel = prompt_channel("positive" if click.positive else "negative", click.label, num_classes)
        local = [p - o for p, o in zip(click.position, origin)]
        draw_click(prompts[channel], local, sigma)
    return prompts
