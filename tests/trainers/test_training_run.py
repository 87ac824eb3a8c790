"""CPU training of vit_tiny end to end: files, falling loss, exact resume, extension, time budget.

One uninterrupted two-epoch run (module fixture) is the reference the other tests compare with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsam3d import paths
from nnsam3d.commands.train import main
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.request import TrainingRequest
from nnsam3d.trainers.launch import train_fold

EPOCHS, ITERATIONS = 2, 10
TRAINER = "nnSAM3DTrainer"


def _request(dataset: str, **changes) -> TrainingRequest:
    request = TrainingRequest(dataset=dataset, fold="0", device="cpu", num_epochs=EPOCHS,
                              iterations_per_epoch=ITERATIONS, num_workers=0, seed=3)
    return replace(request, **changes)


@pytest.fixture(scope="module")
def reference_run(module_dataset):
    """An uninterrupted two-epoch run shared by this module's tests: (trainer, fold folder, dataset)."""
    dataset = module_dataset[0]
    trainer = train_fold(TRAINER, _request(dataset))
    return trainer, trainer.output_folder, dataset


def _final_weights(fold_folder: Path) -> dict:
    return load_checkpoint(fold_folder / "checkpoint_final.pth").network_weights


def test_two_epochs_write_checkpoints_log_progress_and_validation(reference_run, reported_dice_check):
    trainer, fold, _ = reference_run
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth",
                 "training_log.txt", "progress.png"):
        assert (fold / name).is_file(), name
    final = load_checkpoint(fold / "checkpoint_final.pth")  # weights_only=True inside
    assert final.epoch == EPOCHS and final.trainer_name == TRAINER and final.fold == "0"
    plans = Plans.from_json(final.plans)
    assert plans.network.trainable == "full" and plans.network.deep_supervision
    assert final.dataset_json["labels"]["lesion"] == 3
    log = (fold / "training_log.txt").read_text()
    assert "epoch 1/2: train loss" in log and "epoch 2/2: train loss" in log
    assert "pseudo-Dice [liver" in log and "lr " in log
    # Whole validation cases, predicted, exported in their original geometry and evaluated.
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert sorted(case["case_id"] for case in summary["per_case"]) == sorted(trainer.fold.val)
    labels_tr = paths.raw_root() / trainer.dataset_name / "labelsTr"
    reported_dice_check(summary, fold / "validation", labels_tr, {"liver": 1, "kidney": 2, "lesion": 3})
    assert set(summary["labels"]) == {"liver", "kidney", "lesion"}
    for case in trainer.fold.val:
        assert (fold / "validation" / f"{case}.nii.gz").is_file()
    assert "foreground mean" in log


def test_loss_goes_down(reference_run):  # fixed seed, easy phantoms, lr 1e-3 from scratch
    losses = reference_run[0].iteration_losses
    assert len(losses) == EPOCHS * ITERATIONS
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


class SimulatedCrash(RuntimeError):
    pass


def test_resume_after_a_crash_continues_at_epoch_2_exactly(reference_run, module_dataset, monkeypatch, tmp_path):
    _, reference_fold, tiny_dataset = reference_run
    results_root = module_dataset[1] / "results"
    monkeypatch.setenv("nnSAM3D_results", str(tmp_path / "crash_results"))
    monkeypatch.setattr(nnSAM3DTrainer, "checkpoint_every", 1)
    original_run_epoch = nnSAM3DTrainer.run_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise SimulatedCrash
        return original_run_epoch(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(nnSAM3DTrainer, "run_epoch", crash_in_second_epoch)
        with pytest.raises(SimulatedCrash):
            train_fold(TRAINER, _request(tiny_dataset))
    fold = tmp_path / "crash_results" / reference_fold.relative_to(results_root)
    latest = load_checkpoint(fold / "checkpoint_latest.pth")
    assert latest.epoch == 1 and not (fold / "checkpoint_final.pth").exists()

    resumed = nnSAM3DTrainer(_request(tiny_dataset, continue_training=True))
    resumed.initialize()
    assert resumed.epochs_completed == 1
    saved_optimizer = latest.training_state["optimization"]["optimizer"]
    loaded_optimizer = resumed.optimization.optimizer.state_dict()
    assert saved_optimizer["state"].keys() == loaded_optimizer["state"].keys()
    for index, state in saved_optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(loaded_optimizer["state"][index][key], value)
    assert resumed.optimization.schedule.step_count == ITERATIONS
    resumed._stop_streams()

    trainer = train_fold(TRAINER, _request(tiny_dataset, continue_training=True))
    assert len(trainer.iteration_losses) == ITERATIONS  # only epoch 2 was trained
    log = (fold / "training_log.txt").read_text()
    assert log.count("epoch 1/2: train loss") == 1 and log.count("epoch 2/2: train loss") == 1
    # Same batches, same generator states, same optimiser: the resumed run ends where the
    # uninterrupted one did.
    expected, actual = _final_weights(reference_fold), _final_weights(fold)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_a_finished_run_is_extended_with_more_epochs(reference_run, module_dataset, monkeypatch, tmp_path):
    _, reference_fold, tiny_dataset = reference_run
    # Work on a copy, so that the reference run stays as it is for the other tests.
    monkeypatch.setenv("nnSAM3D_results", str(tmp_path / "results"))
    fold = tmp_path / "results" / reference_fold.relative_to(module_dataset[1] / "results")
    shutil.copytree(reference_fold, fold)
    train_fold(TRAINER, _request(tiny_dataset, continue_training=True))  # nothing left to do
    assert "nothing to train" in (fold / "training_log.txt").read_text()
    assert load_checkpoint(fold / "checkpoint_final.pth").epoch == EPOCHS

    trainer = train_fold(TRAINER, _request(tiny_dataset, continue_training=True, num_epochs=3))
    assert trainer.epochs_completed == 3
    assert load_checkpoint(fold / "checkpoint_final.pth").epoch == 3
    assert "epoch 3/3: train loss" in (fold / "training_log.txt").read_text()
    assert len(load_checkpoint(fold / "checkpoint_final.pth").training_state["log"]["history"]) == 3


def test_time_budget_ends_training_after_the_epoch_and_finishes_normally(tiny_dataset, nnsam3d_folders):
    # Through the command line, as the CPU demo runs it.
    arguments = [tiny_dataset, "0", "--device", "cpu", "--epochs", "50", "--iterations-per-epoch", str(ITERATIONS),
                 "--time-budget-minutes", "0.0001", "--num-workers", "0", "--npz"]
    assert main(arguments) == 0
    fold = nnsam3d_folders.results / tiny_dataset / f"{TRAINER}__nnsam3d_plans" / "fold_0"
    assert load_checkpoint(fold / "checkpoint_final.pth").epoch == 1
    assert load_checkpoint(fold / "checkpoint_latest.pth").epoch == 1
    log = (fold / "training_log.txt").read_text()
    assert "time budget of 0.0001 minutes used up after epoch 1 of 50" in log
    epoch_line = next(line for line in log.splitlines() if "epoch 1/50" in line)
    assert " left" not in epoch_line  # the budget, not the 49 nominal epochs, bounds the time shown
    assert (fold / "validation" / "summary.json").is_file()
    probabilities = sorted((fold / "validation").glob("*.npz"))  # --npz: kept for ensembling
    assert len(probabilities) == len(json.loads((fold / "validation" / "summary.json").read_text())["per_case"])
    with np.load(probabilities[0]) as archive:
        assert any(archive[name].dtype == np.float16 for name in archive.files)
