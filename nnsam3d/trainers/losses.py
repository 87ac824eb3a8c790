"""Segmentation losses: soft Dice + cross-entropy, and its deep-supervision wrapper.

As in nnU-Net: Dice over the foreground classes only, computed over the whole batch at once
("batch Dice", so a class absent from one patch does not get a degenerate per-patch Dice), plus
cross-entropy over all classes. The loss reported is ``CE + (1 - Dice)``, so it is positive and
goes down as training improves.

With an ignore label (sparse annotation, nnU-Net's convention) the voxels carrying it contribute
nothing: cross-entropy averages over the annotated voxels only, and the Dice sums leave them out
(probabilities and target both masked), so changing a label or a prediction inside the ignored
region changes neither the loss nor its gradients. A patch without any annotated voxel gives 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_per_class(
    probabilities: torch.Tensor, target_one_hot: torch.Tensor, smooth: float = 1e-5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch soft Dice per class.

    probabilities, target_one_hot: (B, K, z, y, x); mask: None or (B, 1, z, y, x), 1 where a
    voxel counts (annotated). Returns (K,) with the sums taken over the batch and space together.
    """
    if mask is not None:
        probabilities = probabilities * mask
        target_one_hot = target_one_hot * mask
    axes = [0] + list(range(2, probabilities.ndim))
    intersection = (probabilities * target_one_hot).sum(axes)
    total = probabilities.sum(axes) + target_one_hot.sum(axes)
    return (2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)


class DiceCrossEntropyLoss(nn.Module):
    """``CE + (1 - mean foreground soft Dice)``.

    forward(logits (B, K, z, y, x), target (B, 1, z, y, x) integer labels) → scalar. Computed in
    float32 whatever the autocast precision, because the Dice sums over a whole patch lose
    precision in half precision. ``ignore_label``: target value of unannotated voxels (the
    dataset's "ignore" label, ≥ K), left out of both terms; None when every voxel is annotated.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5,
                 ignore_label: int | None = None):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        labels = target[:, 0].long()
        mask = None
        if self.ignore_label is not None:
            annotated = labels != self.ignore_label
            mask = annotated[:, None].to(logits.dtype)
            # Mean over the annotated voxels, 0 when there are none (without asking the GPU
            # whether there are, which would make the host wait every step).
            cross_entropy = F.cross_entropy(
                logits, labels, ignore_index=self.ignore_label, reduction="sum"
            ) / annotated.sum().clamp_min(1)
            labels = torch.where(annotated, labels, 0)  # any class: the mask removes these voxels
        else:
            cross_entropy = F.cross_entropy(logits, labels)
        probabilities = torch.softmax(logits, dim=1)
        # scatter_ straight into float: F.one_hot would first build an int64 (B, z, y, x, K) copy.
        one_hot = torch.zeros_like(probabilities).scatter_(1, labels[:, None], 1.0)
        dice = soft_dice_per_class(probabilities[:, 1:], one_hot[:, 1:], self.smooth, mask)
        return self.ce_weight * cross_entropy + self.dice_weight * (1 - dice.mean())


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights: halved at every coarser output, normalised to sum to 1.

    Three outputs (full, 1/2, 1/4) → [4/7, 2/7, 1/7].
    """
    raw = [0.5**i for i in range(num_outputs)]
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map (B, 1, z, y, x) to spatial ``shape``.

    Nearest keeps labels labels (no averaging of class values); the target follows the output's
    exact shape, so any decoder stride works.
    """
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest").to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the outputs (full resolution first).

    forward(outputs: a tensor or a sequence of (B, K, ...) logits, target (B, 1, z, y, x)) →
    scalar. The target is resized to each output with nearest interpolation. A single tensor
    (network without deep supervision) gets weight 1.
    """

    def __init__(self, loss: nn.Module, num_outputs: int):
        super().__init__()
        self.loss = loss
        self.weights = deep_supervision_weights(num_outputs)

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if len(outputs) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} deep-supervision outputs, got {len(outputs)}")
        return sum(
            weight * self.loss(output, downsample_target(target, output.shape[2:]))
            for weight, output in zip(self.weights, outputs)
        )


def full_resolution(outputs) -> torch.Tensor:
    """The full-resolution logits of a network output (tensor, or deep-supervision tuple)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, ignore_label: int | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged with per-voxel ``weights`` (B, z, y, x): ``sum(w * CE) / sum(w)``.

    logits (B, K, z, y, x), target (B, 1, z, y, x). Voxels carrying ``ignore_label`` count with
    weight 0. All-zero weights give 0 (with a gradient graph, so every parameter still gets one).
    """
    labels = target[:, 0].long()
    weights = weights.float()
    if ignore_label is not None:
        annotated = labels != ignore_label
        weights = weights * annotated
        labels = torch.where(annotated, labels, 0)
    voxel_loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return (weights * voxel_loss).sum() / weights.sum().clamp_min(1e-6)


class NetworkLoss(nn.Module):
    """The forward half of a training step, ``loss(network(data), target)``, as one module, so
    that ``--compile`` hands the whole of it to ``torch.compile``: network and loss in one graph
    (the backward follows as one graph too), with no break between them
    (``tests/trainers/test_graph_breaks.py`` counts the breaks)."""

    def __init__(self, network: nn.Module, loss: nn.Module):
        super().__init__()
        self.network = network
        self.loss = loss

    def forward(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(self.network(data), target)
