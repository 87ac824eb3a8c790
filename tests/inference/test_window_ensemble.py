"""Test-time mirroring and fold averaging of window predictions, and the Predictor's ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.inference.predictor import Predictor
from nnsam3d.inference.window_prediction import WindowEnsemble, mirror_combinations
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network


class PositionNetwork(torch.nn.Module):
    """Logits (ramp along x, 0) whatever the input: position-dependent, not mirror-equivariant."""

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([ramp, torch.zeros_like(ramp)], dim=1)


class PointwiseNetwork(torch.nn.Module):
    """Logits (x, -x) of the first channel: commutes with any mirroring."""

    def forward(self, x):
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


def test_all_eight_mirrorings_identity_first():
    combos = mirror_combinations()
    assert combos[0] == () and len(combos) == 8 and len(set(combos)) == 8


def test_mirrored_predictions_are_flipped_back_before_averaging():
    windows = torch.randn(2, 1, 4, 4, 6)
    averaged = WindowEnsemble([PositionNetwork()])(windows)
    # Half of the mirrorings flip x: at x the network says ramp(x) when not flipped, and the
    # flipped-back prediction shows ramp(5 - x).
    x = torch.arange(6, dtype=torch.float32)
    expected = 0.5 * torch.sigmoid(x) + 0.5 * torch.sigmoid(5 - x)
    torch.testing.assert_close(averaged[0, 0, 0, 0], expected)
    torch.testing.assert_close(averaged.sum(dim=1), torch.ones(2, 4, 4, 6))


def test_a_mirror_equivariant_network_is_unchanged_by_mirroring():
    windows = torch.randn(3, 1, 4, 6, 8)
    with_tta = WindowEnsemble([PointwiseNetwork()])(windows)
    without = WindowEnsemble([PointwiseNetwork()], mirror_axes=())(windows)
    torch.testing.assert_close(with_tta, without)
    torch.testing.assert_close(without, torch.softmax(PointwiseNetwork()(windows), dim=1))


def test_deep_supervision_output_is_refused_with_advice():
    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TypeError, match="deep supervision"):
        WindowEnsemble([TwoOutputs()])(torch.zeros(1, 1, 2, 2, 2))


def test_predictor_averages_the_folds_softmax(make_plans):
    plans = make_plans()
    description = DatasetDescription({"0": "CT"}, {"background": 0, "a": 1, "b": 2, "c": 3}, 1, ".nii.gz")
    torch.manual_seed(0)
    networks = [build_network(plans.network), build_network(plans.network)]
    data = np.random.default_rng(0).normal(size=(1, 12, 40, 36)).astype(np.float32)
    options = dict(use_mirroring=False, accumulator_dtype=torch.float32)
    both = Predictor(networks, plans, description, torch.device("cpu"), **options).predict_preprocessed(data)
    first = Predictor(networks[:1], plans, description, torch.device("cpu"), **options).predict_preprocessed(data)
    second = Predictor(networks[1:], plans, description, torch.device("cpu"), **options).predict_preprocessed(data)
    assert both.shape == (4, 12, 40, 36) and both.dtype == np.float32
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-5)
    np.testing.assert_allclose(both.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(first, second, atol=1e-3)  # two different networks really
    assert networks[0].deep_supervision is False and not networks[0].training
