"""Clicks are respected where the network ignores them (``interactive/click_enforcement.py``).

The network here (``ClickIgnoringNetwork``) takes the prompt and ignores it, so every change a
click makes is the session's enforcement: the clicked voxel carries what the click asks, the
region around it follows the network's own evidence inside the click's ball, nothing farther
changes, and undo, reset and region exports stay exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.inference.postprocessing import PostprocessingRules
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.session import open_session
from nnsam3d.io.raw_dataset import DatasetDescription
from tests.interactive_stand_ins import ClickIgnoringNetwork

DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "nodule": 1, "vessel": 2},
                                 num_training=1, file_ending=".nii.gz")
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
"""(i, j, k) at 1 x 1 x 2 mm: the network grid (z, y, x = k, j, i at 2, 1, 1 mm) without resampling."""
FAINT, BRIGHT = 170.0, 300.0
"""The network's class-1 probability: 0.40 in faint blobs (plausible, not chosen), 0.99 in bright ones."""
FAINT_A = (slice(8, 13), slice(8, 13), slice(3, 6))
FAINT_B = (slice(24, 29), slice(8, 13), slice(3, 6))
BRIGHT_C = (slice(8, 13), slice(24, 29), slice(3, 6))
BRIGHT_D = (slice(24, 29), slice(24, 29), slice(3, 6))
UNSURE_E = (slice(30, 33), slice(16, 19), slice(3, 6))
"""Class 1 at probability 0.65 (196 HU), its centre 0.55 (185 HU): the network chooses it, unsure."""
FAINT_SLAB = (slice(0, 36), slice(31, 36), slice(0, 10))
"""Larger than a click's ball."""


def phantom() -> np.ndarray:
    """(i, j, k) HU, -100 background: faint blobs A and B, bright blobs C and D (5 x 5 x 3 voxels each)."""
    image = np.full((36, 36, 10), -100.0, dtype=np.float32)
    for box in (FAINT_A, FAINT_B, FAINT_SLAB):
        image[box] = FAINT
    for box in (BRIGHT_C, BRIGHT_D):
        image[box] = BRIGHT
    image[UNSURE_E] = 196.0
    image[31, 17, 4] = 185.0
    return image


def session_of(plans, affine=AFFINE, postprocessing=None):
    predictor = Predictor([ClickIgnoringNetwork()], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False,
                          postprocessing=postprocessing)
    return open_session(predictor, phantom(), affine)


@pytest.fixture
def plans(make_plans):
    return make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=3)


def only(box, shape=(36, 36, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box] = True
    return mask


def test_a_positive_click_the_network_ignores_takes_the_plausible_structure_around_it(plans):
    session = session_of(plans)
    automatic = session.automatic()
    assert (automatic[FAINT_A] == 0).all() and (automatic[BRIGHT_C] == 1).all()
    labels = session.click(voxel=(10, 10, 4), label="nodule")
    # The whole faint blob (probability 0.40, within the ball) joins; nothing else changes.
    assert np.array_equal(labels != automatic, only(FAINT_A))
    assert (labels[FAINT_A] == 1).all() and (labels[FAINT_B] == 0).all()


def test_the_correction_stays_inside_the_clicks_ball(plans):
    """In a plausible structure larger than the ball, the voxels within 3 sigma (6 mm at these
    spacings: sigma is 2 voxels of the finest axis) of the click join, and no others."""
    session = session_of(plans)
    automatic = session.automatic()
    labels = session.click(voxel=(18, 33, 5), label="nodule")
    i, j, k = np.meshgrid(*(np.arange(n) for n in automatic.shape), indexing="ij")
    ball = (i - 18.0) ** 2 + (j - 33.0) ** 2 + (2 * (k - 5.0)) ** 2 <= 36.0
    assert np.array_equal(labels != automatic, ball & only(FAINT_SLAB))


def test_a_positive_click_without_evidence_changes_the_clicked_voxel_only(plans):
    session = session_of(plans)
    automatic = session.automatic()
    labels = session.click(voxel=(18, 18, 8), label="vessel")   # background, probability of class 2 ~ 0
    assert labels[18, 18, 8] == 2
    assert np.array_equal(labels != automatic, only((18, 18, 8)))


def test_a_negative_click_removes_the_false_positive_it_lands_on(plans):
    session = session_of(plans)
    automatic = session.automatic()
    labels = session.click(voxel=(10, 26, 4), positive=False, label="nodule")
    assert (labels[BRIGHT_C] == 0).all() and (labels[BRIGHT_D] == 1).all()
    assert np.array_equal(labels != automatic, only(BRIGHT_C))


def test_a_negative_click_removes_an_unsure_false_positive_surer_than_the_clicked_voxel(plans):
    """The rim of an over-segmentation is often a little surer than where the user clicks: where
    another class is at least half as probable, the class goes all the same."""
    session = session_of(plans)
    automatic = session.automatic()
    assert (automatic[UNSURE_E] == 1).all()
    labels = session.click(voxel=(31, 17, 4), positive=False, label="nodule")
    assert np.array_equal(labels != automatic, only(UNSURE_E))


def test_clicks_the_network_follows_change_nothing(plans):
    session = session_of(plans)
    automatic = session.automatic()
    assert np.array_equal(session.click(voxel=(10, 26, 4), label="nodule"), automatic)   # already class 1
    assert np.array_equal(session.click(voxel=(10, 10, 4), positive=False, label="nodule"), automatic)  # already not


def test_a_later_click_wins_and_undo_reset_and_exports_stay_exact(plans):
    session = session_of(plans)
    automatic = session.automatic()
    first = session.click(voxel=(10, 10, 4), label="nodule").copy()
    second = session.click(voxel=(10, 10, 4), positive=False, label="nodule").copy()
    assert second[10, 10, 4] == 0                                   # the negative click, later, wins there
    third = session.click(voxel=(18, 18, 8), label="vessel").copy()
    assert np.array_equal(session.canonical_labels, session._export_whole())   # the region export is the whole one
    assert np.array_equal(session.undo(), second)
    assert np.array_equal(session.undo(), first)
    again = session.click(voxel=(18, 18, 8), label="vessel")
    assert np.array_equal(again != first, only((18, 18, 8))) and not np.array_equal(again, third)
    reset = session.reset("vessel")
    assert np.array_equal(reset, first)                            # the nodule click replayed, the vessel one gone
    assert np.array_equal(session.canonical_labels, session._export_whole())
    while session.clicks:
        session.undo()
    assert np.array_equal(session.labels, automatic)
    assert torch.equal(session._prior, session._base_prior)


@pytest.mark.parametrize("spacing_ijk", [(0.7, 1.0, 2.0), (1.0, 1.3, 5.0)], ids=["one-axis", "anisotropic"])
def test_the_clicked_voxel_carries_the_click_on_a_resampled_grid(plans, spacing_ijk):
    session = session_of(plans, affine=np.diag([*spacing_ijk, 1.0]))
    for voxel, positive, label in [((18, 18, 8), True, 2), ((30, 3, 1), True, 1), ((10, 26, 4), False, 1),
                                   ((18, 18, 8), False, 2)]:
        labels = session.click(voxel=voxel, positive=positive, label=label)
        assert (labels[voxel] == label) == positive, (voxel, positive, label)
        assert np.array_equal(session.canonical_labels, session._export_whole())


def test_the_clicked_voxel_carries_the_click_whatever_the_resampling_does(plans, monkeypatch):
    """A resampling back to the input grid that moves things (here: the labels shifted by two
    voxels) cannot take a click's answer away from the voxel the user clicked."""
    import nnsam3d.interactive.region_export as export_module

    original = export_module.scores_to_labels
    monkeypatch.setattr(export_module, "scores_to_labels",
                        lambda *args, **kwargs: torch.roll(original(*args, **kwargs), 2, dims=2))
    session = session_of(plans, affine=np.diag([0.7, 1.0, 2.0, 1.0]))
    for voxel, positive, label in [((18, 18, 8), True, 2), ((10, 26, 4), False, 1), ((18, 18, 8), False, 2)]:
        labels = session.click(voxel=voxel, positive=positive, label=label)
        assert (labels[voxel] == label) == positive, (voxel, positive, label)


def test_a_positive_click_where_postprocessing_removed_the_class_restores_it(plans):
    """The automatic result keeps class 1's largest component only (blob D is as large as C: one
    of them goes); the network already says class 1 there, so the export does not change, yet
    the clicked voxel must carry the class."""
    session = session_of(plans, postprocessing=PostprocessingRules(keep_largest_component=(1,)))
    automatic = session.automatic()
    removed = [box for box in (BRIGHT_C, BRIGHT_D) if (automatic[box] == 0).all()]
    assert len(removed) == 1
    voxel = tuple(s.start + 2 for s in removed[0])
    labels = session.click(voxel=voxel, label="nodule")
    assert labels[voxel] == 1
