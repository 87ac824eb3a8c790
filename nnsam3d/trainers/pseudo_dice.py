"""Pseudo-Dice: a cheap per-epoch estimate of validation Dice on random validation patches.

True counts (TP, FP, FN per foreground class) are summed over all validation patches of an
epoch (and over ranks) before the Dice is formed, as nnU-Net does, so that patches in which a
class is absent do not pull the estimate to 0 or 1. It is "pseudo" because it is measured on
patches, not on whole sliding-window predictions; it drives the choice of the best checkpoint
through an exponential moving average.
"""

from __future__ import annotations

import math

import torch


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, ignore_label: int | None = None) -> torch.Tensor:
    """(3, K-1) float64 [TP, FP, FN] per foreground class of an argmax prediction.

    logits: (B, K, z, y, x); target: (B, 1, z, y, x) integer labels. Voxels labelled
    ``ignore_label`` (unannotated) are not counted.
    """
    num_classes = logits.shape[1]
    prediction = logits.argmax(1)
    labels = target[:, 0].long()
    if ignore_label is not None:
        prediction = torch.where(labels == ignore_label, -1, prediction)  # matches no class
    counts = torch.zeros(3, num_classes - 1, dtype=torch.float64, device=logits.device)
    for index, label in enumerate(range(1, num_classes)):
        predicted, actual = prediction == label, labels == label
        counts[0, index] = (predicted & actual).sum()
        counts[1, index] = (predicted & ~actual).sum()
        counts[2, index] = (~predicted & actual).sum()
    return counts


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """Dice per foreground class from summed [TP, FP, FN]; NaN for a class never seen or predicted."""
    tp, fp, fn = counts.double().cpu()
    denominator = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else math.nan for t, d in zip(tp, denominator)]


def nan_mean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


class MovingAverage:
    """Exponential moving average ``ema = factor * ema + (1 - factor) * value`` (first value as is)."""

    def __init__(self, factor: float = 0.9, value: float | None = None):
        self.factor = factor
        self.value = value

    def update(self, value: float) -> float:
        if math.isnan(value):
            return self.value if self.value is not None else math.nan
        self.value = value if self.value is None else self.factor * self.value + (1 - self.factor) * value
        return self.value
