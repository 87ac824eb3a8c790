"""Two CPU processes (gloo) train one epoch data-parallel and end with identical weights."""

from __future__ import annotations

import sys
import textwrap

import torch

from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.trainers.request import TrainingRequest
from nnsam3d.trainers.launch import launch_training

# A trainer from "user code" (found through -tr module:Class in the spawned processes) that,
# after the normal run, stores each rank's weights so that the test can compare them.
RANK_WEIGHTS_TRAINER = '''
import torch
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer


class RankWeightsTrainer(nnSAM3DTrainer):
    def run(self):
        super().run()
        weights = {k: v.detach().cpu() for k, v in self.network_module.state_dict().items()}
        torch.save(weights, self.output_folder.parent / f"rank{self.context.rank}_weights.pt")
'''


def test_two_gloo_processes_train_one_epoch_with_identical_weights(tiny_dataset, tmp_path, monkeypatch):
    (tmp_path / "rank_weights_trainer.py").write_text(textwrap.dedent(RANK_WEIGHTS_TRAINER))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes inherit sys.path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    monkeypatch.delitem(sys.modules, "rank_weights_trainer", raising=False)
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=3,
                              num_workers=0, seed=5)
    launch_training("rank_weights_trainer:RankWeightsTrainer", request, num_processes=2)

    from nnsam3d import paths

    fold = paths.fold_dir(tiny_dataset, "RankWeightsTrainer", "nnsam3d_plans", "0")
    rank0 = torch.load(fold.parent / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(fold.parent / "rank1_weights.pt", weights_only=True)
    final = load_checkpoint(fold / "checkpoint_final.pth")
    initial_like = final.network_weights
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], initial_like[name]), name  # rank 0 wrote what both hold
    log = (fold / "training_log.txt").read_text()
    assert "batch 2 (1 per process x 2)" in log  # the plans' batch split over the two ranks
    assert log.count("epoch 1/1: train loss") == 1  # only rank 0 writes
    assert (fold / "validation" / "summary.json").is_file()
