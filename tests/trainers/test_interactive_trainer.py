"""nnSAM3DTrainer_interactive: simulated clicks land in error regions, both kinds of batches train,
the saved model takes clicks, and two data-parallel processes stay identical."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import torch

from nnsam3d import paths
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.session import open_session
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.image_io import read_volume_in_file_order
from nnsam3d.model.prompt_encoder import PROMPT_KINDS, prompt_channels
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers.interactive import nnSAM3DTrainer_interactive
from nnsam3d.trainers.launch import launch_training, train_fold
from nnsam3d.trainers.request import TrainingRequest

TRAINER = "nnSAM3DTrainer_interactive"


def _click_centres(prompts: torch.Tensor, num_classes: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """(kind, label, voxel) of every ball's peak in one sample's prompt."""
    found = []
    foreground = num_classes - 1
    for kind_index, kind in enumerate(PROMPT_KINDS[1:], start=1):
        for label in range(1, num_classes):
            channel = prompts[kind_index * foreground + label - 1]
            for voxel in torch.nonzero(channel == 1.0).tolist():
                found.append((kind, label, tuple(voxel)))
    return found


def test_interactive_training_clicks_in_errors_and_gives_a_model_that_takes_clicks(tiny_dataset, monkeypatch):
    simulated = []
    original = nnSAM3DTrainer_interactive.simulate_user

    def recording(self, data, target, features, automatic):
        prompts = original(self, data, target, features, automatic)
        simulated.append((prompts.cpu(), target.cpu()))
        steps.append(self.optimization.schedule.step_count)
        return prompts

    steps = []
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "simulate_user", recording)
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "clicks_from", 0.25)
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "interactive_share", 0.75)
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=8,
                              num_workers=0, seed=2)
    trainer = train_fold(TRAINER, request)

    # Both kinds of batches trained, and no clicks in the first quarter of the schedule (steps 0, 1).
    assert 0 < len(simulated) < 6 and len(trainer.iteration_losses) == 8
    assert min(steps) >= 2, steps
    num_classes = trainer.description.num_classes
    clicks = 0
    for prompts, target in simulated:
        assert prompts.shape[1] == prompt_channels(num_classes)
        for sample in range(prompts.shape[0]):
            for kind, label, voxel in _click_centres(prompts[sample], num_classes):
                truth = int(target[sample, 0][voxel])
                # A positive click marks a missed voxel of its class, a negative one a voxel of another.
                assert (truth == label) if kind == "positive" else (truth != label), (kind, label, truth)
                clicks += 1
    assert clicks >= len(simulated)

    # The clicked batches' extra loss looks at the clicks' surroundings only: full weight at a
    # click, none far from every click.
    prompts, _ = simulated[0]
    weights = trainer.click_weights(prompts)
    for sample in range(prompts.shape[0]):
        centres = _click_centres(prompts[sample], num_classes)
        for _, _, voxel in centres:
            assert weights[sample][voxel] == 1.0
        if centres:
            assert 0 < int((weights[sample] > 0).sum()) < weights[sample].numel() // 4

    final = load_checkpoint(trainer.output_folder / "checkpoint_final.pth")
    assert Plans.from_json(final.plans).network.prompt_channels == prompt_channels(num_classes)
    assert (trainer.output_folder / "validation" / "summary.json").is_file()

    # The saved model loads as an interactive predictor and takes a click.
    predictor = Predictor.from_model_folder(trainer.output_folder.parent, folds=["0"], device="cpu",
                                            use_mirroring=False)
    image_file = sorted((paths.raw_root() / tiny_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]
    image, geometry = read_volume_in_file_order(image_file)
    session = open_session(predictor, image, geometry.affine_array)
    automatic = session.automatic()
    assert np.array_equal(automatic, predictor.predict_volume(image, geometry.affine_array))
    centre = tuple(n // 2 for n in image.shape)
    refined = session.click(voxel=centre, positive=True, label="liver")
    assert refined.shape == image.shape


RANK_WEIGHTS_TRAINER = '''
import torch
from nnsam3d.trainers.interactive import nnSAM3DTrainer_interactive


class RankWeightsInteractive(nnSAM3DTrainer_interactive):
    def run(self):
        super().run()
        weights = {k: v.detach().cpu() for k, v in self.network_module.state_dict().items()}
        torch.save(weights, self.output_folder.parent / f"rank{self.context.rank}_weights.pt")
'''


def test_two_gloo_processes_train_interactively_with_identical_weights(tiny_dataset, tmp_path, monkeypatch):
    """Ranks draw click-free and clicked batches independently; the prompt branch gets a gradient
    either way, so DistributedDataParallel reduces every parameter every step."""
    (tmp_path / "rank_weights_interactive.py").write_text(textwrap.dedent(RANK_WEIGHTS_TRAINER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delitem(sys.modules, "rank_weights_interactive", raising=False)
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=4,
                              num_workers=0, seed=5)
    launch_training("rank_weights_interactive:RankWeightsInteractive", request, num_processes=2)
    fold = paths.fold_dir(tiny_dataset, "RankWeightsInteractive", "nnsam3d_plans", "0")
    rank0 = torch.load(fold.parent / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(fold.parent / "rank1_weights.pt", weights_only=True)
    assert any(name.startswith("prompt_encoder.") for name in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
