"""Dice + CE and its deep-supervision wrapper."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.trainers.losses import (
    DeepSupervisionLoss,
    DiceCrossEntropyLoss,
    deep_supervision_weights,
    downsample_target,
)
from nnsam3d.trainers.pseudo_dice import confusion_counts, dice_from_counts


def _target(shape=(2, 1, 8, 16, 16)) -> torch.Tensor:
    target = torch.zeros(shape, dtype=torch.int16)
    target[:, :, 2:6, 4:12, 4:12] = 1
    target[:, :, 3:5, 6:8, 6:8] = 2
    return target


def _logits_for(target: torch.Tensor, num_classes: int = 3, confidence: float = 20.0) -> torch.Tensor:
    one_hot = torch.nn.functional.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).float()
    return confidence * (2 * one_hot - 1)


def test_a_perfect_prediction_has_near_zero_loss_and_a_wrong_one_a_high_loss():
    loss = DiceCrossEntropyLoss()
    target = _target()
    perfect = loss(_logits_for(target), target)
    assert perfect.item() < 1e-3
    wrong = loss(_logits_for(torch.zeros_like(target)), target)
    assert wrong.item() > 2.0  # CE large, foreground Dice ~ 0


def test_loss_gradient_points_towards_the_target():
    loss = DiceCrossEntropyLoss()
    target = _target()
    logits = torch.zeros(2, 3, 8, 16, 16, requires_grad=True)
    loss(logits, target).backward()
    # Increasing the logit of the true class must decrease the loss everywhere.
    true_class = torch.nn.functional.one_hot(target[:, 0].long(), 3).movedim(-1, 1).bool()
    assert (logits.grad[true_class] < 0).all()


def test_deep_supervision_weights_halve_and_sum_to_one():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_deep_supervision_loss_resizes_the_target_to_every_output():
    target = _target()
    outputs = [
        _logits_for(target),
        _logits_for(downsample_target(target, (4, 8, 8))),
        _logits_for(downsample_target(target, (2, 4, 4))),
    ]
    ds_loss = DeepSupervisionLoss(DiceCrossEntropyLoss(), 3)
    assert ds_loss(outputs, target).item() < 1e-3
    # A wrong coarse output costs its weight's share.
    outputs[2] = _logits_for(torch.zeros(2, 1, 2, 4, 4, dtype=torch.int16))
    assert ds_loss(outputs, target).item() > 0.2
    with pytest.raises(ValueError, match="expected 3"):
        ds_loss(outputs[:2], target)


def test_nearest_downsampling_keeps_label_values():
    target = _target()
    small = downsample_target(target, (4, 8, 8))
    assert small.dtype == target.dtype
    assert set(small.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(small, target[:, :, ::2, ::2, ::2])


def test_pseudo_dice_from_counts():
    target = _target()
    logits = _logits_for(target)
    assert dice_from_counts(confusion_counts(logits, target)) == pytest.approx([1.0, 1.0])
    half = target.clone()
    half[:, :, :, :, 8:] = 0  # predict only the left half of class 1; class 2 (x 6:8) stays whole
    dice = dice_from_counts(confusion_counts(_logits_for(half), target))
    assert 0.5 < dice[0] < 1.0
    assert dice[1] == pytest.approx(1.0)
    empty = torch.zeros_like(target)
    assert all(d != d for d in dice_from_counts(confusion_counts(_logits_for(empty), empty)))  # NaN: never seen
