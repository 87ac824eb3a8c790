"""A click the network does not follow is enforced where the user clicked, and around it as far
as the network's own evidence allows.

Why: the network's answer to a click is learned, and a learned answer can ignore it (a structure
of 20 voxels the decoder does not resolve, a prior that outweighs the click's ball). A user who
clicks a missed structure and sees nothing change clicks again and again; one who clicks away a
false positive expects it gone. So after the network has voted, the session's class
probabilities are corrected within each click's ball (the prompt's own footprint, 3 sigma,
:mod:`click_prompts`), on the network grid, where the network disagrees with the click:

* a positive click for class c at voxel v where the network does not choose c: v takes c, and so
  does every voxel of the ball connected to v (6-connectivity) where c is at least as probable
  as at v and at least ``PLAUSIBLE_SHARE`` of the most probable class there: the clicked
  structure grows as far as the network finds c plausible, not over the whole ball;
* a negative click for c at v where the network chooses c: v and the voxels of the ball
  connected to it that the network also gives c, with no more probability for c than at v or
  with another class at least ``PLAUSIBLE_SHARE`` as probable as c, lose c (the next most
  probable class takes them): a false positive the user rejects goes, up to where the network
  is sure of c. (Without the second condition, on the small-structure dataset a rim of false
  positive beside a true structure kept the voxels a little surer than the clicked one, 0.39-0.60
  against 0.36-0.53, and no clicked-away false positive was ever gone.)

Where the network already agrees with a click, nothing changes. Corrections are computed from
the network's probabilities alone (never from other corrections) and applied in click order, a
later click winning where two overlap; they are a function of (probabilities, clicks), so undo,
reset and a re-export of any region give the same labels. The session applies them to the
scores it exports and to the prior the next prompt carries (what the user sees is what the
network is told), and on the input grid sets the clicked voxel itself, which resampling could
otherwise blur back.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from nnsam3d.interactive.click_prompts import CLICK_CUTOFF_SIGMAS, Click

PLAUSIBLE_SHARE = 0.5
"""A positive click's class spreads only to voxels where its probability is at least this share
of the most probable class's (with no evidence at all, only the clicked voxel changes); a negative
click's class leaves voxels where another class is at least this share as probable."""
EQUAL_EVIDENCE = 1e-3
"""Probabilities this close count as equal: the Gaussian-weighted average of equal votes differs
from voxel to voxel in its last bits, and a uniform structure must act as one."""


def ball_box(position: Sequence[float], sigma: Sequence[float], shape: Sequence[int]) -> tuple[slice, ...]:
    """The box (voxels of a grid of ``shape``) of the ball of a click at ``position``."""
    box = []
    for axis in range(3):
        reach = CLICK_CUTOFF_SIGMAS * sigma[axis]
        lo = max(0, math.floor(position[axis] - reach))
        hi = min(shape[axis], math.ceil(position[axis] + reach) + 1)
        box.append(slice(lo, max(lo, hi)))
    return tuple(box)


def inside_ball(box: tuple[slice, ...], position: Sequence[float], sigma: Sequence[float]) -> np.ndarray:
    """Which voxels of ``box`` lie in the ball of a click at ``position`` (boolean, the box's shape)."""
    axes = [(np.arange(s.start, s.stop) - position[a]) / sigma[a] for a, s in enumerate(box)]
    squared = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return squared <= CLICK_CUTOFF_SIGMAS**2


def clicked_voxel(position: Sequence[float]) -> tuple[int, int, int]:
    """The grid voxel a click at ``position`` (continuous voxel coordinates) falls in (the rule
    that also picks the tiles a click re-predicts)."""
    return tuple(int(round(p)) for p in position)


def enforced_region(probabilities: torch.Tensor, click: Click, sigma: Sequence[float],
                    box: tuple[slice, ...]) -> np.ndarray | None:
    """The voxels of ``box`` (the click's ball box) whose class the click changes (module rules),
    or None where the network already follows the click.

    probabilities: (K, *box shape) class probabilities of the box, the network's alone."""
    local = tuple(v - s.start for v, s in zip(clicked_voxel(click.position), box))
    scores = probabilities.float().cpu().numpy()
    winner = scores.argmax(0)
    at_click = scores[(click.label, *local)]
    if (winner[local] == click.label) == click.positive:
        return None
    if click.positive:
        candidates = ((scores[click.label] >= at_click - EQUAL_EVIDENCE)
                      & (scores[click.label] >= PLAUSIBLE_SHARE * scores.max(0)))
    else:
        runner_up = np.sort(scores, axis=0)[-2]
        candidates = (winner == click.label) & ((scores[click.label] <= at_click + EQUAL_EVIDENCE)
                                                | (runner_up >= PLAUSIBLE_SHARE * scores[click.label]))
    candidates &= inside_ball(box, click.position, sigma)
    candidates[local] = True
    components, _count = ndimage.label(candidates)  # 6-connectivity
    return components == components[local]


def apply_enforcement(probabilities: torch.Tensor, region: np.ndarray, click: Click) -> None:
    """Correct ``probabilities`` (K, *region shape) in place over ``region``: a positive click's
    class becomes certain there, a negative click's class impossible."""
    mask = torch.from_numpy(region).to(probabilities.device)
    if click.positive:
        probabilities[:, mask] = 0.0
        probabilities[click.label, mask] = 1.0
    else:
        probabilities[click.label, mask] = 0.0


@contextmanager
def clicks_enforced(scores: torch.Tensor, clicks: Sequence[Click], sigma: Sequence[float]):
    """Within the block ``scores`` (K, z, y, x: the session's class probabilities on the padded
    network grid) hold ``clicks`` enforced; after it, exactly the network's scores again. Every
    correction is computed from the network's scores before any is applied, then applied in
    click order."""
    corrections = []
    for click in clicks:
        ball = ball_box(click.position, sigma, scores.shape[1:])
        region = enforced_region(scores[(slice(None), *ball)], click, sigma, ball)
        if region is not None:
            corrections.append((ball, region, click))
    saved = []
    try:
        for ball, region, click in corrections:
            in_ball = scores[(slice(None), *ball)]
            saved.append((ball, in_ball.clone()))
            apply_enforcement(in_ball, region, click)
        yield
    finally:
        for ball, values in reversed(saved):
            scores[(slice(None), *ball)] = values


def reach_of_clicks(box: tuple[slice, ...], clicks: Sequence[Click], sigma: Sequence[float],
                    shape: Sequence[int]) -> tuple[slice, ...]:
    """Where a change of the scores in ``box`` can change the enforced labels: the box, and the
    ball of every click reaching into it (its correction follows the scores in its ball)."""
    for click in clicks:
        ball = ball_box(click.position, sigma, shape)
        if all(b.start < s.stop and s.start < b.stop for b, s in zip(ball, box)):
            box = tuple(slice(min(b.start, s.start), max(b.stop, s.stop)) for b, s in zip(ball, box))
    return box


def image_voxel_in(click: Click, box: tuple[slice, ...]) -> tuple[int, ...] | None:
    """The click's input voxel relative to ``box`` (canonical image voxels), None if outside or unknown."""
    if click.image_voxel is None or not all(s.start <= v < s.stop for v, s in zip(click.image_voxel, box)):
        return None
    return tuple(v - s.start for v, s in zip(click.image_voxel, box))


def set_clicked_voxels(labels: np.ndarray, box: tuple[slice, ...], clicks: Sequence[Click],
                       scores: torch.Tensor) -> None:
    """Each clicked input voxel in ``box`` (``labels``' place in the canonical image) carries what
    its click asks, in click order: resampling the corrected scores back to the input grid could
    blur a one-voxel correction away. A negative click's voxel that kept the class takes the
    next most probable class at the click. ``scores``: the padded network grid's, enforced."""
    for click in clicks:
        local = image_voxel_in(click, box)
        if local is None or (labels[local] == click.label) == click.positive:
            continue
        if click.positive:
            labels[local] = click.label
        else:
            at_click = scores[(slice(None), *clicked_voxel(click.position))].clone()
            at_click[click.label] = -1.0
            labels[local] = int(at_click.argmax())
