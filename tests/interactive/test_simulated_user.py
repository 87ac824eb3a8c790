"""The simulated user clicks in the largest error region, positive for misses, negative for leaks,
at its centre (evaluation) or drawn towards it (training); click balls are drawn where they belong."""

from __future__ import annotations

import numpy as np
import torch

from nnsam3d.interactive.click_prompts import Click, build_prompts
from nnsam3d.interactive.simulated_user import classes_with_errors, error_click
from nnsam3d.model.prompt_encoder import prompt_channel


def _maps():
    reference = np.zeros((10, 30, 30), dtype=np.int16)
    prediction = np.zeros_like(reference)
    reference[2:8, 2:12, 2:12] = 1          # missed entirely: 600 voxels of false negative
    prediction[2:5, 20:24, 20:24] = 1       # a leak: 48 voxels of false positive
    reference[3:6, 20:28, 2:6] = 2          # class 2 found exactly
    prediction[3:6, 20:28, 2:6] = 2
    return prediction, reference


def test_the_largest_error_gets_the_click_at_its_centre():
    prediction, reference = _maps()
    click = error_click(prediction, reference, 1)
    assert click.positive and click.label == 1
    assert 4 <= click.position[0] <= 5 and 6 <= click.position[1] <= 7 and 6 <= click.position[2] <= 7
    prediction[2:8, 2:12, 2:12] = 1         # the miss fixed: the leak is now the largest error
    click = error_click(prediction, reference, 1)
    assert not click.positive and prediction[tuple(int(v) for v in click.position)] == 1
    assert reference[tuple(int(v) for v in click.position)] != 1
    assert error_click(reference, reference, 1) is None
    assert classes_with_errors(prediction, reference, [1, 2]) == [1]


def test_voxels_of_the_ignore_label_hold_no_error_and_get_no_click():
    """Unannotated voxels (the ignore label, 3 here) are neither a false positive nor a class."""
    prediction, reference = _maps()
    prediction[2:8, 2:12, 2:12] = 1                 # the miss fixed; the leak (48 voxels) remains
    reference[:, 15:30, 15:30] = 3                  # ... but lies where nobody annotated
    prediction[6:10, 15:30, 15:30] = 1              # and a larger leak there too (900 voxels)
    assert error_click(prediction, reference, 1, ignore_label=3) is None
    assert classes_with_errors(prediction, reference, [1, 2], ignore_label=3) == []
    assert classes_with_errors(prediction, reference, [1, 2]) == [1]      # without it: "errors"
    prediction[0, 0, 0:4] = 1                       # an annotated leak, smaller than the unannotated one
    click = error_click(prediction, reference, 1, ignore_label=3)
    assert not click.positive and click.position[0] == 0 and click.position[2] < 4
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = error_click(prediction, reference, 1, rng=rng, ignore_label=3)
        assert reference[tuple(int(v) for v in drawn.position)] == 0


def test_drawn_clicks_stay_inside_the_region_and_favour_its_centre():
    prediction, reference = _maps()
    rng = np.random.default_rng(0)
    positions = np.array([error_click(prediction, reference, 1, (3.0, 1.0, 1.0), rng).position for _ in range(200)])
    assert ((positions >= [2, 2, 2]) & (positions < [8, 12, 12])).all()
    assert len({tuple(p) for p in positions}) > 10                       # they vary
    border = (positions[:, 1] == 2) | (positions[:, 1] == 11)
    assert border.mean() < 0.1                      # and avoid the border (a uniform draw: 0.2)


def test_prompts_hold_the_prior_and_the_balls_of_each_kind_and_class():
    prior = torch.zeros((6, 20, 20), dtype=torch.int16)
    prior[1:3, 5:10, 5:10] = 2
    clicks = [Click(1, (3.0, 12.0, 12.0), True), Click(2, (2.0, 7.0, 7.0), False)]
    prompts = build_prompts(prior, clicks, 3, spacing=(2.0, 1.0, 1.0), origin=(1, 2, 2))
    assert prompts.shape == (6, 6, 20, 20)
    assert torch.equal(prompts[prompt_channel("prior", 2, 3)], (prior == 2).float())
    assert prompts[prompt_channel("prior", 1, 3)].sum() == 0
    positive = prompts[prompt_channel("positive", 1, 3)]
    assert positive[2, 10, 10] == 1.0 and positive.argmax() == np.ravel_multi_index((2, 10, 10), (6, 20, 20))
    # Round in mm: 2 voxels in-plane (2 mm) weigh as 1 slice across (2 mm), 2 slices (4 mm) less.
    assert torch.isclose(positive[2, 12, 10], positive[3, 10, 10]) and positive[3, 10, 10] > positive[4, 10, 10] > 0
    assert positive[2, 17, 10] == 0                                       # beyond 3 sigma (6 mm)
    assert prompts[prompt_channel("negative", 2, 3)][1, 5, 5] == 1.0
    assert prompts[prompt_channel("negative", 1, 3)].sum() == 0


def test_balls_of_one_kind_and_class_add_up_so_a_repeated_click_changes_the_prompt():
    prior = torch.zeros((6, 20, 20), dtype=torch.int16)
    once = build_prompts(prior, [Click(1, (3.0, 10.0, 10.0), True)], 3, spacing=(2.0, 1.0, 1.0))
    clicks = [Click(1, (3.0, 10.0, 10.0), True), Click(1, (3.0, 10.0, 10.0), True), Click(1, (3.0, 10.0, 13.0), True),
              Click(2, (3.0, 10.0, 10.0), True), Click(1, (3.0, 10.0, 10.0), False)]
    prompts = build_prompts(prior, clicks, 3, spacing=(2.0, 1.0, 1.0))
    positive = prompts[prompt_channel("positive", 1, 3)]
    single = once[prompt_channel("positive", 1, 3)]
    shifted = torch.roll(single, 3, dims=2)  # the third click's ball (it stays inside the volume)
    assert torch.allclose(positive, 2 * single + shifted)
    assert positive[3, 10, 10] > 2.0 and positive[3, 10, 13] > 1.0    # overlapping balls add too
    # Other classes and kinds keep their own channels: one ball each.
    assert torch.allclose(prompts[prompt_channel("positive", 2, 3)], single)
    assert torch.allclose(prompts[prompt_channel("negative", 1, 3)], single)
