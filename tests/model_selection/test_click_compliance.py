"""Click compliance (respected clicks, false positives clicked away, the mean curve's falls) is
what the clicks did: exact answers on hand-made cases with scripted sessions, and through the
real session and ``evaluate_interactive`` with ``PromptOracle`` and a stand-in that ignores
negative clicks (which must not look compliant)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import write_volume_in_file_order
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.prompt_encoder import prompt_channel
from nnsam3d.model_selection.click_compliance import ClickTracker, largest_fall, removal_fractions
from nnsam3d.model_selection.interactive_evaluation import class_curve, evaluate_interactive, format_curve_table
from tests.interactive_stand_ins import ORACLE_CLASSES, PromptOracle


class ScriptedSession:
    """The parts of an interactive session ``class_curve`` uses, on a 1 mm grid (mm = voxel), with
    a chosen answer to clicks: "components" adds the reference component clicked positively and
    removes the predicted component clicked negatively; "ignore_negative" does the positive half
    only; "one_voxel" sets or clears the clicked voxel alone."""

    def __init__(self, labels: np.ndarray, reference: np.ndarray, behaviour: str):
        self.start, self.canonical_labels = labels.copy(), labels.copy()
        self.reference, self.behaviour = reference, behaviour
        self.geometry = SimpleNamespace(canonical_affine=np.eye(4))

    def click(self, point_mm, positive, label):
        voxel = tuple(int(round(v)) for v in point_mm[:3])
        labels = self.canonical_labels
        if self.behaviour == "one_voxel":
            labels[voxel] = label if positive else 0
        elif positive:
            components, _ = ndimage.label(self.reference == label)
            labels[components == components[voxel]] = label
        elif self.behaviour == "components":
            components, _ = ndimage.label(labels == label)
            labels[components == components[voxel]] = 0

    def reset(self, label):
        self.canonical_labels = self.start.copy()


def _nodules():
    """Reference: nodule A (27 voxels) and nodule B (8); prediction: A, B missed, a 12-voxel decoy."""
    reference = np.zeros((10, 20, 20), dtype=np.int16)
    reference[2:5, 2:5, 2:5] = 1
    reference[6:8, 12:14, 12:14] = 1
    prediction = np.zeros_like(reference)
    prediction[2:5, 2:5, 2:5] = 1
    prediction[2:5, 12:14, 2:4] = 1
    return prediction, reference


def _run(prediction, reference, behaviour, clicks=5):
    tracker, seconds = ClickTracker(1), []
    session = ScriptedSession(prediction, reference, behaviour)
    curve = class_curve(session, reference, 1, clicks, (1.0, 1.0, 1.0), seconds, tracker=tracker)
    return curve, tracker


def test_a_compliant_model_respects_every_click_and_the_clicked_decoy_goes_at_once():
    prediction, reference = _nodules()
    curve, tracker = _run(prediction, reference, "components")
    # The decoy (12 voxels) is the largest error: a negative click, then a positive one on B.
    assert [(c["positive"], c["respected"]) for c in tracker.clicks] == [(False, True), (True, True)]
    assert tracker.false_positives == [{"click": 1, "voxels": 12, "gone_after": 1, "observed": 1}]
    assert curve == pytest.approx([54 / 74, 54 / 62, 1.0, 1.0, 1.0, 1.0])
    assert removal_fractions(tracker.false_positives) == {
        "tracked": 1, "removed_within": {"1": 1.0, "2": 1.0, "3": 1.0}, "never": 0}


def test_a_model_that_ignores_negative_clicks_respects_none_and_the_decoy_never_goes():
    prediction, reference = _nodules()
    curve, tracker = _run(prediction, reference, "ignore_negative")
    assert len(tracker.clicks) == 5 and not any(c["respected"] or c["positive"] for c in tracker.clicks)
    # Clicked five times, the decoy is one false positive followed once, never gone.
    assert tracker.false_positives == [{"click": 1, "voxels": 12, "gone_after": None, "observed": 5}]
    assert removal_fractions(tracker.false_positives) == {
        "tracked": 1, "removed_within": {"1": 0.0, "2": 0.0, "3": 0.0}, "never": 1}
    assert largest_fall(curve) == 0.0


def test_a_false_positive_removed_voxel_by_voxel_counts_the_clicks_until_it_is_gone():
    reference = np.zeros((10, 20, 20), dtype=np.int16)
    reference[2:5, 2:5, 2:5] = 1
    prediction = reference.copy()
    prediction[6, 10, 9:12] = 1                     # a 3-voxel leak; clicking its centre splits it
    curve, tracker = _run(prediction, reference, "one_voxel")
    assert [c["voxel"] for c in tracker.clicks] == [[6, 10, 10], [6, 10, 9], [6, 10, 11]]
    assert all(c["respected"] and not c["positive"] for c in tracker.clicks)
    assert tracker.false_positives == [{"click": 1, "voxels": 3, "gone_after": 3, "observed": 3}]
    assert removal_fractions(tracker.false_positives)["removed_within"] == {"1": 0.0, "2": 0.0, "3": 1.0}
    assert curve[:4] == pytest.approx([54 / 57, 54 / 56, 54 / 55, 1.0])


def test_removal_shares_leave_out_false_positives_whose_budget_ended_first():
    fps = [{"gone_after": 1, "observed": 1}, {"gone_after": None, "observed": 1},    # clicked last
           {"gone_after": 3, "observed": 3}, {"gone_after": None, "observed": 4}]
    assert removal_fractions(fps) == {"tracked": 4, "removed_within": {"1": 0.25, "2": 1 / 3, "3": 2 / 3},
                                      "never": 2}
    assert removal_fractions([]) == {"tracked": 0, "removed_within": {"1": None, "2": None, "3": None}, "never": 0}


def test_largest_fall_is_the_biggest_drop_between_neighbours():
    assert largest_fall([0.5, 0.7, 0.6, 0.65, 0.62]) == pytest.approx(0.1)
    assert largest_fall([0.5, 0.6, 0.6]) == 0.0
    assert largest_fall([0.5, None, 0.4, 0.45]) == pytest.approx(0.0)   # pairs with a gap are skipped
    assert largest_fall([None]) is None


# ------------------------------------------------------------------ the real session

DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "liver": 1, "lesion": 2},
                                 num_training=1, file_ending=".nii.gz")
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
"""RAS, 1 x 1 x 2 mm: the canonical grid is the plans' target grid (no resampling)."""


class IgnoresNegativeClicks(PromptOracle):
    """``PromptOracle`` blind to negative clicks: what a model that learnt to ignore them does."""

    def decode(self, x, features, prompts=None):
        if prompts is not None:
            prompts = prompts.clone()
            for label in range(1, ORACLE_CLASSES):
                prompts[:, prompt_channel("negative", label, ORACLE_CLASSES)] = 0
        return super().decode(x, features, prompts)


@pytest.fixture
def oracle_case(tmp_path):
    """One case: a bright block (liver, found), a small bright decoy (not liver: a false positive
    of 9 voxels) and a dim block (lesion, which the stand-ins never find without clicks)."""
    image = np.full((40, 36, 14), -100.0, dtype=np.float32)
    reference = np.zeros(image.shape, dtype=np.uint8)
    image[4:16, 4:16, 3:10] = 300.0
    reference[4:16, 4:16, 3:10] = 1
    image[26:29, 6:9, 6] = 300.0
    image[22:31, 20:29, 4:8] = 100.0
    reference[22:31, 20:29, 4:8] = 2
    geometry = ImageGeometry(image.shape, tuple(tuple(row) for row in AFFINE))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_volume_in_file_order(image.astype(np.int16), geometry, tmp_path / "images" / "case_0000.nii.gz")
    write_volume_in_file_order(reference, geometry, tmp_path / "labels" / "case.nii.gz")
    return tmp_path


@pytest.mark.parametrize("network, enforced, negative_respected",
                         [(PromptOracle, True, 1.0), (IgnoresNegativeClicks, False, 0.0), (IgnoresNegativeClicks, True, 1.0)],
                         ids=["obeys", "ignores-negatives-without-enforcement", "ignores-negatives-enforced"])
def test_evaluate_interactive_reports_whether_the_session_obeyed(oracle_case, make_plans, monkeypatch, network,
                                                                 enforced, negative_respected):
    """The session enforces clicks its network ignores (``interactive/click_enforcement.py``); with
    that switched off, a network blind to negative clicks must show up as such in the figures."""
    if not enforced:
        import contextlib

        import nnsam3d.interactive.session as session_module

        monkeypatch.setattr(session_module, "clicks_enforced", lambda *args: contextlib.nullcontext())
        monkeypatch.setattr(session_module, "set_clicked_voxels", lambda *args: None)
    plans = make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=ORACLE_CLASSES)
    predictor = Predictor([network()], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False)
    summary = evaluate_interactive(predictor, oracle_case / "images", oracle_case / "labels", max_clicks=3,
                                   message=lambda text: None)
    case = summary["per_case"][0]
    liver_clicks = case["clicks"]["liver"]
    # The decoy is the liver's only error: a negative click on it, at its centre (canonical z, y, x).
    assert liver_clicks[0]["positive"] is False and liver_clicks[0]["voxel"] == [6, 7, 27]
    assert {c["respected"] for c in liver_clicks} == {negative_respected == 1.0}
    assert summary["per_class"]["liver"]["clicks_respected"]["negative"] == negative_respected
    liver_fps = case["false_positives"]["liver"]
    assert [fp["voxels"] for fp in liver_fps] == [9]
    if negative_respected:
        assert liver_fps[0]["gone_after"] == 1 and len(liver_clicks) == 1     # perfect: the user stops
        assert case["dice_every_click"]["liver"][1:] == [1.0, 1.0, 1.0]
    else:
        assert liver_fps[0]["gone_after"] is None and len(liver_clicks) == 3
        assert summary["false_positive_removal"]["never"] >= 1
    # The lesion is missed: the first click is positive, and both stand-ins obey it.
    assert case["clicks"]["lesion"][0]["positive"] and case["clicks"]["lesion"][0]["respected"]
    # The pooled figures are the per-case records'.
    every = [c for name in ("liver", "lesion") for c in case["clicks"][name]]
    negatives = [c["respected"] for c in every if not c["positive"]]
    assert summary["clicks_respected"]["negative"] == pytest.approx(np.mean(negatives))
    assert summary["clicks_respected"]["count"]["negative"] == len(negatives)
    mean = summary["mean_every_click"]["mean_over_classes"]
    assert summary["largest_mean_fall"] == pytest.approx(max(0.0, *(a - b for a, b in zip(mean, mean[1:]))))
    assert [mean[n] for n in summary["clicks"]] == pytest.approx(
        [summary["mean_over_classes"][str(n)] for n in summary["clicks"]])
    assert "clicks respected: positive" in format_curve_table(summary)
