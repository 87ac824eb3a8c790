"""Random-generator state survives a weights_only checkpoint round trip."""

from __future__ import annotations

import random

import numpy as np
import torch

from nnsam3d.trainers.checkpointing import capture_rng_state, restore_rng_state


def _draw() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _draw()
    torch.save({"rng": capture_rng_state()}, tmp_path / "state.pth")
    expected = _draw()
    _draw()  # move on
    restore_rng_state(torch.load(tmp_path / "state.pth", weights_only=True)["rng"])
    assert _draw() == expected
