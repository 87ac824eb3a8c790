"""``benchmarks/small_structure_clicks.py``'s own figures (the whole script trains for minutes and
is run by hand): detection errors per component, and checks against their thresholds."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    """The script as a module (its folder on ``sys.path``, as when it runs)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("small_structure_clicks")


def test_component_errors_count_missed_structures_and_false_components_on_decoys(script):
    reference = np.zeros((8, 20, 20), dtype=np.uint8)
    reference[1:3, 1:4, 1:4] = 1                     # found (partly)
    reference[5:7, 1:4, 1:4] = 1                     # missed
    prediction = np.zeros_like(reference)
    prediction[1:3, 2:5, 2:5] = 1
    prediction[1:3, 10:13, 10:13] = 1                # on a decoy
    prediction[6, 17, 17] = 1                        # a speck elsewhere
    decoys = np.zeros(reference.shape, dtype=bool)
    decoys[1:3, 11:14, 11:14] = True
    assert script.component_errors(prediction, reference, 1, decoys) == {
        "structures": 2, "missed": 1, "predicted_components": 3, "false_components": 2,
        "false_components_on_decoys": 1}


def test_checks_compare_each_figure_with_its_threshold(script):
    summary = {"clicks_respected": {"positive": 0.97, "negative": None},
               "false_positive_removal": {"removed_within": {"3": 0.5}}, "largest_mean_fall": 0.0}
    checks = script.checks(summary)
    assert checks["positive_clicks_respected"]["met"] is True
    assert checks["negative_clicks_respected"]["met"] is None        # no negative click: unknown
    assert checks["false_positives_gone_within_3_clicks"]["met"] is False
    assert checks["largest_mean_fall_at_most"]["met"] is True
