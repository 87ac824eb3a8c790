"""The interactive session: clicks act where and how they should, the encoder runs once per tile,
bad clicks are refused, and the geometry is the predictor's.

Two networks: ``PromptOracle``, whose decoder turns the prompt into logits by a fixed rule
(class 1 where the image is bright; the prior kept; a positive ball adds its class, a negative
one removes it), so that the session's own work (tiling, vote swapping, geometry, undo) is
checked against a known answer; and a real interactive 3DMedSAM with random weights for the
encoder-call count and the equality with the predictor.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.interactive.session import open_session
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels

NUM_CLASSES = 3
DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "liver": 1, "lesion": 2},
                                 num_training=1, file_ending=".nii.gz")
LPS_PERMUTED = np.array([[0.0, -1.0, 0.0, 10.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.0, -30.0], [0, 0, 0, 1.0]])
"""File axes (i, j, k) = (A→P, R→L, I→S) at 1 x 1 x 2 mm: permuted and flipped against RAS."""


class PromptOracle(nn.Module):
    """A stand-in decoder with a known answer (see the module docstring); counts encoder calls."""

    is_interactive = True

    def __init__(self):
        super().__init__()
        self.encoder_calls = 0
        self.deep_supervision = False

    def encode(self, x):
        self.encoder_calls += 1
        return [x]

    def decode(self, x, features, prompts=None):
        logits = torch.zeros((x.shape[0], NUM_CLASSES, *x.shape[2:]))
        bright = (features[0][:, 0] > 0.5).float()
        logits[:, 1] = 10 * bright - 5
        logits[:, 2] = -5
        if prompts is not None:
            for label in (1, 2):
                prior = prompts[:, prompt_channel("prior", label, NUM_CLASSES)]
                positive = prompts[:, prompt_channel("positive", label, NUM_CLASSES)]
                negative = prompts[:, prompt_channel("negative", label, NUM_CLASSES)]
                logits[:, label] = 10 * prior - 5 + 40 * (positive > 0.5) - 40 * (negative > 0.5)
        return logits

    def forward(self, x, prompts=None):
        return self.decode(x, self.encode(x), prompts)


def phantom() -> np.ndarray:
    """(i, j, k) HU: background -100, a bright block (300 HU, class 1 for the oracle) and a dim
    block (100 HU, missed by the automatic rule)."""
    image = np.full((40, 36, 14), -100.0, dtype=np.float32)
    image[4:16, 4:16, 3:10] = 300.0
    image[24:34, 20:30, 4:10] = 100.0
    return image


@pytest.fixture
def plans(make_plans):
    return make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=NUM_CLASSES)


def oracle_predictor(plans, mirroring=False) -> tuple[Predictor, PromptOracle]:
    oracle = PromptOracle()
    return Predictor([oracle], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=mirroring), oracle


def test_automatic_is_the_predictors_label_map(plans):
    predictor, _ = oracle_predictor(plans)
    image = phantom()
    session = open_session(predictor, image, LPS_PERMUTED)
    expected = predictor.predict_volume(image, LPS_PERMUTED)
    assert np.array_equal(session.automatic(), expected)
    assert np.array_equal(session.labels, expected)
    assert (expected[4:16, 4:16, 3:10] == 1).all() and (expected[24:34, 20:30, 4:10] == 0).all()


def test_positive_click_in_a_missed_region_adds_it_and_negative_click_removes_a_false_one(plans):
    predictor, _ = oracle_predictor(plans)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    before = session.labels
    after = session.click(voxel=(29, 25, 7), positive=True, label="liver")
    assert after[29, 25, 7] == 1 and before[29, 25, 7] == 0
    changed = np.argwhere(after != before)
    assert (after[after != before] == 1).all()                       # only added, only liver
    assert (np.abs(changed - [29, 25, 7]) <= [6, 6, 3]).all()         # and only near the click

    removed = session.click(voxel=(10, 10, 6), positive=False, label=1)
    assert removed[10, 10, 6] == 0 and after[10, 10, 6] == 1
    assert ((removed != after) <= (after == 1)).all()                 # only liver voxels went
    assert removed[29, 25, 7] == 1                                    # the first click holds


def test_click_in_world_coordinates_is_the_click_at_that_voxel(plans):
    predictor, _ = oracle_predictor(plans)
    by_voxel = open_session(predictor, phantom(), LPS_PERMUTED).click(voxel=(29, 25, 7), label="lesion")
    point_mm = (LPS_PERMUTED @ [29, 25, 7, 1])[:3]
    by_point = open_session(predictor, phantom(), LPS_PERMUTED).click(point_mm, positive=True, label="lesion")
    assert np.array_equal(by_voxel, by_point)
    # A ball round in millimetres: 2 mm away is in, 4 mm away out, along the 1 mm and the 2 mm axes.
    assert by_point[29, 25, 7] == 2 and by_point[31, 25, 7] == 2 and by_point[29, 25, 8] == 2
    assert by_point[33, 25, 7] == 0 and by_point[29, 25, 9] == 0


def test_undo_and_reset_restore_exactly(plans):
    predictor, _ = oracle_predictor(plans)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    start = session.labels
    first = session.click(voxel=(29, 25, 7), label="lesion")
    second = session.click(voxel=(10, 10, 6), positive=False, label="liver")
    assert np.array_equal(session.undo(), first)
    assert np.array_equal(session.undo(), start)
    with pytest.raises(ClickError, match="nothing to undo"):
        session.undo()

    session.click(voxel=(29, 25, 7), label="lesion")
    session.click(voxel=(10, 10, 6), positive=False, label="liver")
    only_liver = open_session(predictor, phantom(), LPS_PERMUTED)
    expected = only_liver.click(voxel=(10, 10, 6), positive=False, label="liver")
    assert np.array_equal(session.reset("lesion"), expected)
    assert not np.array_equal(expected, second)
    assert np.array_equal(session.undo(), second)


def test_the_encoder_runs_once_per_tile_and_mirroring(plans):
    predictor, oracle = oracle_predictor(plans, mirroring=True)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    oracle.encoder_calls = 0
    session.click(voxel=(29, 25, 7), label="lesion")
    first = oracle.encoder_calls
    tiles = len(session._tiles_containing(session.clicks[-1].position))
    assert first == tiles * 8 == session.encoder_calls
    session.click(voxel=(28, 24, 7), positive=False, label="lesion")
    assert oracle.encoder_calls == first                               # same region: decoders only


def test_bad_clicks_are_refused_clearly(plans):
    predictor, _ = oracle_predictor(plans)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    with pytest.raises(ClickError, match="outside the image"):
        session.click((500.0, 0.0, 0.0), label="liver")
    with pytest.raises(ClickError, match="outside the image"):
        session.click(voxel=(40, 0, 0), label="liver")
    with pytest.raises(ClickError, match="unknown label 'spleen'; this model segments: liver, lesion"):
        session.click(voxel=(1, 1, 1), label="spleen")
    with pytest.raises(ClickError, match="unknown label 7"):
        session.click(voxel=(1, 1, 1), label=7)
    with pytest.raises(ClickError, match="foreground"):
        session.click(voxel=(1, 1, 1), label="background")
    assert session.clicks == [] and np.array_equal(session.labels, session.automatic())


def test_a_model_without_prompt_branch_is_refused(plans):
    predictor = Predictor([build_network(plans.network)], plans, DESCRIPTION, torch.device("cpu"))
    with pytest.raises(ClickError, match="nnSAM3DTrainer_interactive"):
        open_session(predictor, phantom(), LPS_PERMUTED)


def test_real_interactive_network_reuses_encoder_features_and_starts_as_the_predictor(plans):
    plans = dataclasses.replace(plans, network=plans.network.replace(prompt_channels=prompt_channels(NUM_CLASSES)))
    torch.manual_seed(0)
    network = build_network(plans.network)
    with torch.no_grad():  # a prompt branch that acts (a new one adds zeros)
        for parameter in network.prompt_encoder.parameters():
            parameter.normal_(0, 0.3)
    calls = []
    network.encoder.register_forward_hook(lambda *args: calls.append(1))
    predictor = Predictor([network], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False)
    image = phantom()
    session = open_session(predictor, image, LPS_PERMUTED)
    assert np.array_equal(session.automatic(), predictor.predict_volume(image, LPS_PERMUTED))
    calls.clear()
    first = session.click(voxel=(29, 25, 7), label="lesion")
    tiles = len(session._tiles_containing(session.clicks[-1].position))
    assert len(calls) == tiles >= 1
    second = session.click(voxel=(29, 26, 7), positive=False, label="liver")
    assert len(calls) == tiles
    assert not np.array_equal(first, second)                       # the prompt branch acts
    assert first.shape == image.shape and first.dtype == np.int16


@pytest.mark.parametrize("spacing_ijk", [(1.0, 1.0, 2.0), (0.7, 1.0, 2.0), (1.0, 1.3, 5.0)],
                         ids=["no-resampling", "one-axis-resampled", "anisotropic-resampled"])
def test_a_click_reexports_only_its_region_and_equals_the_whole_export(plans, spacing_ijk):
    """The session re-exports only the changed tiles' region along axes the export does not
    resample; the labels must equal those of exporting all scores anew, after clicks, undo, reset."""
    predictor, _ = oracle_predictor(plans)
    affine = np.diag([*spacing_ijk, 1.0])
    session = open_session(predictor, phantom(), affine)
    shape = np.array(phantom().shape)

    def assert_equals_whole_export():
        whole = session._export_whole()
        assert np.array_equal(session._exported, whole)
        assert np.array_equal(session.canonical_labels, whole)  # no postprocessing, no initial segmentation

    for voxel, positive, label in [((29, 25, 7), True, "lesion"), ((10, 10, 6), False, "liver"),
                                   ((2, 33, 1), True, "liver"), ((30, 24, 6), False, "lesion")]:
        session.click(voxel=tuple(min(v, n - 1) for v, n in zip(voxel, shape)), positive=positive, label=label)
        assert_equals_whole_export()
    session.undo()
    assert_equals_whole_export()
    session.reset("liver")
    assert_equals_whole_export()
