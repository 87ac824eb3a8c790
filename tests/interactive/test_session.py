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

from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.interactive.session import open_session
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.model.prompt_encoder import prompt_channels
from tests.interactive_stand_ins import ORACLE_CLASSES as NUM_CLASSES, PromptOracle

DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "liver": 1, "lesion": 2},
                                 num_training=1, file_ending=".nii.gz")
LPS_PERMUTED = np.array([[0.0, -1.0, 0.0, 10.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.0, -30.0], [0, 0, 0, 1.0]])
"""File axes (i, j, k) = (A→P, R→L, I→S) at 1 x 1 x 2 mm: permuted and flipped against RAS."""


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


def test_the_ignore_label_takes_no_clicks(plans):
    description = DatasetDescription(channel_names={"0": "CT"}, num_training=1, file_ending=".nii.gz",
                                     labels={"background": 0, "liver": 1, "lesion": 2, "ignore": 3})
    assert description.num_classes == NUM_CLASSES
    predictor = Predictor([PromptOracle()], plans, description, torch.device("cpu"), use_mirroring=False)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    for label in ("ignore", 3):
        with pytest.raises(ClickError, match="ignore label .*not a class"):
            session.click(voxel=(10, 10, 6), positive=False, label=label)
    with pytest.raises(ClickError, match="this model segments: liver, lesion$"):
        session.click(voxel=(10, 10, 6), label="spleen")
    assert session.clicks == []


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
    network.encoder.register_forward_hook(lambda module, args, output: calls.extend([1] * args[0].shape[0]))
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


def _random_interactive_network(plans, seed: int = 0):
    torch.manual_seed(seed)
    network = build_network(plans.network.replace(prompt_channels=prompt_channels(NUM_CLASSES)))
    with torch.no_grad():  # a prompt branch that acts (a new one adds zeros)
        for parameter in network.prompt_encoder.parameters():
            parameter.normal_(0, 0.3)
    return network


@pytest.mark.parametrize("mirroring", [False, True])
def test_tiles_decoded_in_batches_equal_tiles_decoded_one_by_one(plans, mirroring):
    """The fast path (tiles through encoder and decoder as a batch, the predictor's batch size)
    gives the one-tile-at-a-time result, and every tile's prompt is the segmentation before the
    click: with batches of one, a tile decoded later must not see the earlier tiles' new votes."""
    network = _random_interactive_network(plans)
    image = phantom()
    empty = np.zeros(image.shape, dtype=np.int16)  # refine an empty segmentation: the first click's prior is empty
    clicks = [((29, 25, 7), True, "lesion"), ((20, 18, 7), True, "liver"), ((21, 18, 7), False, "lesion")]
    sessions = {}
    for batch_size in (1, 3, 64):
        predictor = Predictor([network], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=mirroring,
                              batch_size=batch_size)
        session = open_session(predictor, image, LPS_PERMUTED, empty)
        for voxel, positive, label in clicks:
            session.click(voxel=voxel, positive=positive, label=label)
        sessions[batch_size] = session
    one_by_one = sessions[1]
    assert len(one_by_one._tiles_containing(one_by_one.clicks[1].position)) > 3  # batches of 3 hold several tiles
    for batch_size in (3, 64):
        assert torch.allclose(sessions[batch_size]._scores, one_by_one._scores, atol=1e-5)
        assert torch.equal(sessions[batch_size]._prior, one_by_one._prior)
        assert np.array_equal(sessions[batch_size].labels, one_by_one.labels)
        assert sessions[batch_size].encoder_calls == one_by_one.encoder_calls


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


# ------------------------------------------------------------------ all or nothing, host copies, the cache

def _state(session) -> dict:
    """Everything a click may change, copied."""
    return {"clicks": list(session.clicks), "scores": session._scores.clone(), "prior": session._prior.clone(),
            "labels": session._labels.copy(), "exported": session._exported.copy(),
            "votes": dict(session._tile_votes), "history": list(session._history)}


def _assert_state_equals(session, state: dict) -> None:
    assert session.clicks == state["clicks"]
    assert torch.equal(session._scores, state["scores"]) and torch.equal(session._prior, state["prior"])
    assert np.array_equal(session._labels, state["labels"]) and np.array_equal(session._exported, state["exported"])
    assert session._tile_votes.keys() == state["votes"].keys()
    assert all(session._tile_votes[k] is v for k, v in state["votes"].items())
    assert len(session._history) == len(state["history"])
    assert all(a is b for a, b in zip(session._history, state["history"]))


@pytest.mark.parametrize("failing", ["second tile", "export"])
@pytest.mark.parametrize("action", ["click", "reset"])
def test_a_failed_click_or_reset_leaves_the_session_exactly_as_it_was(plans, monkeypatch, failing, action):
    """An out-of-memory error (here injected) while the second batch of tiles is predicted (the
    first one's votes already swapped in), or while the labels are exported, must leave no
    phantom click, no half-swapped votes, no undo record."""
    predictor, _ = oracle_predictor(plans)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    session.click(voxel=(29, 25, 7), label="lesion")
    session.click(voxel=(10, 10, 6), positive=False, label="liver")
    before = _state(session)
    calls = []

    def fail_on_second_tile(original):
        def failing_vote(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("CUDA out of memory (injected)")
            return original(*args, **kwargs)
        return failing_vote

    if failing == "second tile":
        monkeypatch.setattr(session, "_prompted_votes", fail_on_second_tile(session._prompted_votes))
    else:
        monkeypatch.setattr(session, "_refresh_region", lambda box, clicks: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError, match="injected"):
        if action == "click":
            session.click(voxel=(20, 18, 7), label="liver")   # in every tile: the second batch fails
        else:
            session.reset("lesion")
    _assert_state_equals(session, before)

    # Still usable, and as if the failure never happened.
    monkeypatch.undo()
    expected = open_session(predictor, phantom(), LPS_PERMUTED)
    expected.click(voxel=(29, 25, 7), label="lesion")
    after_first = expected.click(voxel=(10, 10, 6), positive=False, label="liver").copy()
    assert np.array_equal(session.click(voxel=(20, 18, 7), label="liver"),
                          expected.click(voxel=(20, 18, 7), label="liver"))
    assert np.array_equal(session.undo(), after_first)


class _CopyInFlight:
    """A stand-in for a CUDA event after a non-blocking copy: until synchronize() the host buffer
    holds garbage (NaN); synchronize() completes the copy."""

    def __init__(self, host: torch.Tensor, source: torch.Tensor):
        self.host, self.source = host, source.clone()

    def synchronize(self):
        self.host.copy_(self.source)


def test_undo_and_a_later_click_wait_for_the_vote_copies_to_complete(plans, monkeypatch):
    from nnsam3d.devices import HostCopy
    import nnsam3d.interactive.session as session_module

    def copy_in_flight(vote):
        host = torch.full_like(vote, float("nan"))
        return HostCopy(host, _CopyInFlight(host, vote))

    reference_predictor, _ = oracle_predictor(plans)
    reference = open_session(reference_predictor, phantom(), LPS_PERMUTED)
    reference.click(voxel=(29, 25, 7), label="lesion")
    scores_after_first = reference._scores.clone()

    monkeypatch.setattr(session_module, "copy_to_host", copy_in_flight)
    predictor, _ = oracle_predictor(plans)
    session = open_session(predictor, phantom(), LPS_PERMUTED)
    first = session.click(voxel=(29, 25, 7), label="lesion")
    # The second click swaps the first one's votes out: it reads their copies.
    second = session.click(voxel=(28, 24, 7), positive=False, label="lesion")
    assert not torch.isnan(session._scores).any()
    assert np.array_equal(second, reference.click(voxel=(28, 24, 7), positive=False, label="lesion"))
    # Undo swaps the first click's votes back in: it reads their copies again.
    assert np.array_equal(session.undo(), first)
    assert torch.allclose(session._scores, scores_after_first, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_copy_to_pinned_memory_is_complete_when_read():
    from nnsam3d.devices import copy_to_host

    source = torch.randn(64, 256, 256, device="cuda")
    copies = [copy_to_host(source * k) for k in range(4)]
    for k, copy in enumerate(copies):
        assert copy.get().is_pinned() and torch.equal(copy.get(), (source * k).cpu())


def test_the_feature_cache_stays_within_its_bytes(plans):
    """Oracle features are the tile itself: (1, 1, 8, 32, 32) float32, 32 KiB per tile and mirroring."""
    predictor, oracle = oracle_predictor(plans, mirroring=True)
    entry = 8 * 32 * 32 * 4
    session = open_session(predictor, phantom(), LPS_PERMUTED, cache_bytes=8 * entry)  # one tile, 8 mirrorings
    assert session.tiles_for(voxel=(2, 33, 1)) == [2]
    session.click(voxel=(2, 33, 1), label="liver")
    assert session.encoder_calls == 8 and session.feature_cache.bytes == 8 * entry
    session.click(voxel=(2, 33, 1), positive=False, label="liver")
    assert session.encoder_calls == 8                              # all of tile 2 was kept
    session.click(voxel=(29, 25, 7), label="lesion")               # 12 tiles: only the last one stays
    assert session.encoder_calls == 8 + 12 * 8
    assert session.feature_cache.bytes == 8 * entry and len(session.feature_cache) == 8
    session.click(voxel=(2, 33, 1), label="liver")
    assert session.encoder_calls == 8 + 12 * 8 + 8                 # tile 2 had been evicted

    nothing_kept = open_session(predictor, phantom(), LPS_PERMUTED, cache_bytes=0)
    for voxel, positive, label in [((2, 33, 1), True, "liver"), ((2, 33, 1), False, "liver"),
                                   ((29, 25, 7), True, "lesion"), ((2, 33, 1), True, "liver")]:
        nothing_kept.click(voxel=voxel, positive=positive, label=label)
    assert nothing_kept.encoder_calls == 8 + 8 + 12 * 8 + 8 and nothing_kept.feature_cache.bytes == 0
    assert np.array_equal(nothing_kept.labels, session.labels)    # the cache never changes a result


def test_the_state_goes_to_the_gpu_only_beside_the_cache_at_its_bound(plans, monkeypatch):
    from nnsam3d.inference.predictor import fits_on_gpu

    predictor, _ = oracle_predictor(plans)
    asked = []
    original = predictor.volume_device
    monkeypatch.setattr(predictor, "volume_device",
                        lambda shape, per_voxel, reserved_bytes=0: asked.append((per_voxel, reserved_bytes))
                        or original(shape, per_voxel))
    open_session(predictor, phantom(), LPS_PERMUTED, cache_bytes=123_456_789)
    session_state = 2 * 4 * NUM_CLASSES + 4 + 2 * 2   # two float32 score volumes, the weight sum, two int16 priors
    assert (session_state, 123_456_789) in asked        # (the automatic prediction's accumulator asks too)
    gib = 2**30
    assert fits_on_gpu(3 * gib, 0, 10 * gib) and not fits_on_gpu(3 * gib, 3 * gib, 10 * gib)


def test_folds_sharing_one_encoder_encode_once(plans):
    """Two folds with one (frozen, shared) encoder module: one encoder run per tile, and the same
    labels as two folds with equal but separate encoders."""
    import copy

    plans = dataclasses.replace(plans, network=plans.network.replace(prompt_channels=prompt_channels(NUM_CLASSES)))
    torch.manual_seed(0)
    first, second = build_network(plans.network), build_network(plans.network)
    second.encoder = first.encoder
    separate = copy.deepcopy(second)   # an equal encoder, another object
    assert separate.encoder is not first.encoder
    sessions = []
    for networks in ([first, second], [first, separate]):
        predictor = Predictor(networks, plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False)
        image = phantom()  # refining an empty segmentation: no automatic prediction needed
        session = open_session(predictor, image, LPS_PERMUTED, np.zeros(image.shape, dtype=np.int16))
        session.click(voxel=(2, 33, 1), label="liver")
        sessions.append(session)
    shared, unshared = sessions
    assert shared.encoder_calls == 1 and unshared.encoder_calls == 2
    assert np.array_equal(shared.labels, unshared.labels)
    assert torch.allclose(shared._scores, unshared._scores, atol=1e-5)
