"""Random-generator state survives a weights_only checkpoint round trip; where a run resumes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.trainers.checkpointing import (
    BEST,
    FINAL,
    LATEST,
    RESUME_STATE_KEY,
    capture_rng_state,
    find_resume_point,
    restore_rng_state,
)
from nnsam3d.trainers.request import TrainingInputError


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


def _write(folder, name, epoch):
    state = {"marker": name, RESUME_STATE_KEY: {}}
    save_checkpoint(ModelCheckpoint("nnSAM3DTrainer", "0", epoch, {}, {}, {}, state), folder / name)


def test_resume_point_is_the_checkpoint_with_the_most_epochs_and_final_on_a_tie(tmp_path):
    assert find_resume_point(tmp_path, validation_only=False, continue_training=True) is None
    _write(tmp_path, BEST, 4)  # older than latest
    _write(tmp_path, LATEST, 5)
    _write(tmp_path, FINAL, 3)  # a finished short run later extended and checkpointed again
    assert find_resume_point(tmp_path, validation_only=False, continue_training=True).path.name == LATEST
    _write(tmp_path, FINAL, 5)
    point = find_resume_point(tmp_path, validation_only=False, continue_training=True)
    assert (point.path.name, point.state["marker"]) == (FINAL, FINAL)
    assert find_resume_point(tmp_path, validation_only=False, continue_training=False) is None


def test_validation_needs_the_final_checkpoint(tmp_path):
    _write(tmp_path, LATEST, 5)
    with pytest.raises(TrainingInputError, match="checkpoint_final.pth: not found"):
        find_resume_point(tmp_path, validation_only=True, continue_training=False)
    _write(tmp_path, FINAL, 2)
    assert find_resume_point(tmp_path, validation_only=True, continue_training=True).checkpoint.epoch == 2
