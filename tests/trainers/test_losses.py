"""Dice + CE and its deep-supervision wrapper."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.trainers.losses import (
    DeepSupervisionLoss,
    DiceCrossEntropyLoss,
    deep_supervision_weights,
    downsample_target,
    weighted_cross_entropy,
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


IGNORE = 3  # the ignore label of a 3-class dataset (background, 1, 2)


def _sparse_target() -> torch.Tensor:
    """``_target()`` annotated only inside the box [1:7, 2:14, 2:14]; the rest carries IGNORE."""
    target = torch.full((2, 1, 8, 16, 16), IGNORE, dtype=torch.int16)
    target[:, :, 1:7, 2:14, 2:14] = _target()[:, :, 1:7, 2:14, 2:14]
    return target


def test_ignored_voxels_change_neither_the_loss_nor_its_gradients():
    loss = DeepSupervisionLoss(DiceCrossEntropyLoss(ignore_label=IGNORE), 2)
    target = _sparse_target()
    ignored = target[:, 0] == IGNORE
    torch.manual_seed(0)
    outputs = [torch.randn(2, 3, 8, 16, 16, requires_grad=True), torch.randn(2, 3, 4, 8, 8, requires_grad=True)]
    value = loss(outputs, target)
    value.backward()
    gradients = [o.grad.clone() for o in outputs]
    assert value.item() > 0.5
    assert gradients[0].movedim(1, -1)[ignored].abs().max() == 0  # no learning signal where nothing is annotated
    assert gradients[0].movedim(1, -1)[~ignored].abs().max() > 0
    # Anything at all predicted in the ignored region: same loss, same gradients.
    perturbed = []
    for output in outputs:
        small_ignored = (downsample_target(target, output.shape[2:])[:, 0] == IGNORE)[:, None].expand_as(output)
        perturbed.append(torch.where(small_ignored, 100 * torch.randn_like(output), output).detach().requires_grad_())
    again = loss(perturbed, target)
    again.backward()
    assert again.item() == pytest.approx(value.item(), abs=1e-6)
    for before, output in zip(gradients, perturbed):
        torch.testing.assert_close(output.grad, before)


def test_loss_with_an_ignore_label_equals_the_loss_on_the_annotated_box_alone():
    """Independent reference: the same voxels without any ignore label."""
    target = _sparse_target()
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 8, 16, 16)
    box = (slice(None), slice(None), slice(1, 7), slice(2, 14), slice(2, 14))
    assert DiceCrossEntropyLoss(ignore_label=IGNORE)(logits, target).item() == pytest.approx(
        DiceCrossEntropyLoss()(logits[box], target[box]).item(), rel=1e-5)
    # Nothing annotated: nothing to learn, a zero loss (not NaN).
    nothing = torch.full_like(target, IGNORE)
    assert DiceCrossEntropyLoss(ignore_label=IGNORE)(logits, nothing).item() == 0.0


def test_pseudo_dice_does_not_count_ignored_voxels():
    target = _sparse_target()
    prediction = _target()
    prediction[:, :, 0] = 1  # organ predicted on a slice that nobody annotated
    with_ignore = confusion_counts(_logits_for(prediction), target, ignore_label=IGNORE)
    dense = confusion_counts(_logits_for(prediction), _target())
    assert with_ignore[1, 0] == 0 and dense[1, 0] > 0  # no false positives where nothing is annotated
    assert dice_from_counts(with_ignore) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_weighted_cross_entropy_counts_only_weighted_voxels_and_equals_plain_ce_under_a_mask():
    torch.manual_seed(0)
    target = _target()
    logits = torch.randn(2, 3, 8, 16, 16)
    mask = torch.zeros(2, 8, 16, 16)
    mask[:, 2:5, 3:9, 5:11] = 1.0
    voxel_ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), reduction="none")
    assert torch.allclose(weighted_cross_entropy(logits, target, mask), voxel_ce[mask.bool()].mean())

    # Changing the prediction where the weight is 0 changes nothing; where it is > 0 it does.
    outside, inside = logits.clone(), logits.clone()
    outside[:, :, 7, 0, 0] += 50.0
    inside[:, :, 3, 4, 6] += torch.tensor([50.0, 0.0, 0.0])
    reference = weighted_cross_entropy(logits, target, mask)
    assert torch.equal(weighted_cross_entropy(outside, target, mask), reference)
    assert weighted_cross_entropy(inside, target, mask) > reference

    # Ignored voxels weigh nothing; no weight at all gives 0.
    ignored = target.clone()
    ignored[:, :, 2:5, 3:6] = 9
    kept = mask.clone()
    kept[:, 2:5, 3:6] = 0
    assert torch.allclose(weighted_cross_entropy(logits, ignored, mask, ignore_label=9),
                          weighted_cross_entropy(logits, target, kept))
    assert weighted_cross_entropy(logits, target, torch.zeros_like(mask)) == 0
