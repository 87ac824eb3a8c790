"""A click changes the segmentation only where the change is connected to it (``interactive/click_reach.py``).

The stand-in network answers a negative click for class 1 anywhere in a tile by removing class 1
from the whole tile: what a tile-wide answer to a local click looks like at its worst. The
session must take that answer for the structure the user clicked, all of it even beyond the
click's ball, and for nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_reach import click_reach
from nnsam3d.interactive.session import open_session
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.prompt_encoder import prompt_channel
from tests.interactive_stand_ins import ClickIgnoringNetwork

DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "nodule": 1, "vessel": 2},
                                 num_training=1, file_ending=".nii.gz")
LARGE = (slice(8, 30), slice(8, 30), slice(2, 12))
"""A bright structure larger than a click's ball (6 mm in-plane, 1.5 slices), clicked away."""
SMALL = (slice(33, 37), slice(33, 37), slice(5, 8))
"""Another bright structure, not connected to it, in the same tiles."""


class TileWideAnswer(ClickIgnoringNetwork):
    """Class 1 where the image is bright; a negative class-1 click anywhere in a tile removes
    class 1 from the whole tile."""

    def decode(self, x, features, prompts=None):
        logits = torch.zeros((x.shape[0], 3, *x.shape[2:]))
        logits[:, 1] = 10 * (features[0][:, 0] > 0.5).float() - 5
        logits[:, 2] = -5
        if prompts is not None:
            clicked_away = prompts[:, prompt_channel("negative", 1, 3)].flatten(1).amax(1) > 0.5
            logits[clicked_away, 1] = -5
        return logits


@pytest.fixture
def session(make_plans):
    plans = make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=3)
    predictor = Predictor([TileWideAnswer()], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False)
    image = np.full((40, 40, 14), -100.0, dtype=np.float32)
    image[LARGE] = 300.0
    image[SMALL] = 300.0
    return open_session(predictor, image, np.diag([1.0, 1.0, 2.0, 1.0]))


def test_a_click_takes_back_the_whole_structure_it_touches_and_nothing_else(session):
    automatic = session.automatic()
    assert (automatic[LARGE] == 1).all() and (automatic[SMALL] == 1).all()
    tiles = session.tiles_for(voxel=(18, 18, 7))
    assert all(index in tiles for index in session.tiles_for(voxel=(35, 35, 6)))  # the small one lies in clicked tiles
    labels = session.click(voxel=(18, 18, 7), positive=False, label="nodule")
    assert (labels[LARGE] == 0).all()                  # all of it, far beyond the ball
    assert (labels[SMALL] == 1).all()                  # not connected to the click: as it was
    large = np.zeros(automatic.shape, dtype=bool)
    large[LARGE] = True
    assert np.array_equal(labels != automatic, large)  # nothing else changed
    assert np.array_equal(session.canonical_labels, session._export_whole())
    assert np.array_equal(session.undo(), automatic)


def test_the_reach_is_the_ball_and_the_changed_regions_touching_it():
    changed = np.zeros((1, 12, 12), dtype=bool)
    changed[0, 0:5, 0:5] = True      # touches the ball
    changed[0, 5, 5] = True          # diagonal neighbour of it: 26-connected, so it belongs
    changed[0, 9:12, 9:12] = True    # apart
    ball = np.zeros_like(changed)
    ball[0, 1:3, 1:3] = True
    ball[0, 7, 0] = True             # inside the ball, unchanged: the new votes are taken there too
    reach = click_reach(changed, ball)
    expected = ball.copy()
    expected[0, 0:5, 0:5] = True
    expected[0, 5, 5] = True
    assert np.array_equal(reach, expected)
    assert np.array_equal(click_reach(np.zeros_like(changed), ball), ball)
