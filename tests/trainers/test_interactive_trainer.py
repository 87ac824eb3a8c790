"""nnSAM3DTrainer_interactive: simulated clicks land in error regions, both kinds of batches train,
the saved model takes clicks, and two data-parallel processes stay identical."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsam3d import paths
from nnsam3d.commands.evaluate_interactive import main as evaluate_interactive_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.evaluation.metrics import dice
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_prompts import Click, build_prompts
from nnsam3d.interactive.session import InteractiveSession, open_session
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.image_io import read_volume_in_file_order
from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels
from nnsam3d.model.memory_model import SAFETY_MARGIN, estimate_training_memory
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.trainers import interactive as interactive_trainer
from nnsam3d.trainers.interactive import nnSAM3DTrainer_interactive
from nnsam3d.trainers.interactive_budget import interactive_budget, record_interactive_budget
from nnsam3d.trainers.launch import launch_training, train_fold
from nnsam3d.trainers.request import TrainingInputError, TrainingRequest

TRAINER = "nnSAM3DTrainer_interactive"


@dataclass
class SimulatedBatch:
    prompts: torch.Tensor           # (B, P, z, y, x) as the trainer returned them
    target: torch.Tensor            # (B, 1, z, y, x)
    clicks: list[list[Click]]       # every click of each sample, as the trainer drew them
    step: int                       # optimiser step


@pytest.fixture
def simulated_batches(monkeypatch) -> list[SimulatedBatch]:
    """Record every simulated batch of nnSAM3DTrainer_interactive with its clicks.

    The clicks are taken where the trainer hands them to ``build_prompts`` (the last call per
    sample is the returned prompt's), not guessed back from the prompt: balls of repeated or nearby
    clicks add up, so a ball's centre need not hold 1.0, or a maximum, there.
    """
    batches, built = [], []
    original_build, original_simulate = interactive_trainer.build_prompts, nnSAM3DTrainer_interactive.simulate_user

    def building(prior, clicks, *args, **kwargs):
        built.append(list(clicks))
        return original_build(prior, clicks, *args, **kwargs)

    def simulating(self, data, target, features, automatic):
        built.clear()
        prompts = original_simulate(self, data, target, features, automatic)
        batches.append(SimulatedBatch(prompts.cpu(), target.cpu(), built[-data.shape[0]:],
                                      self.optimization.schedule.step_count))
        return prompts

    monkeypatch.setattr(interactive_trainer, "build_prompts", building)
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "simulate_user", simulating)
    return batches


def check_simulated_clicks(batches: list[SimulatedBatch], num_classes: int, spacing,
                           ignore_label: int | None = None) -> int:
    """Every click in the returned prompt, each where its kind belongs; returns the number of clicks."""
    count = 0
    clicks_only = [prompt_channel(kind, label, num_classes) for kind in ("positive", "negative")
                   for label in range(1, num_classes)]
    for batch in batches:
        assert batch.prompts.shape[1] == prompt_channels(num_classes)
        for sample, clicks in enumerate(batch.clicks):
            truth = batch.target[sample, 0]
            # The prompt holds exactly these clicks' balls (repeated ones added up), nothing else.
            drawn = build_prompts(torch.zeros(truth.shape, dtype=torch.int16), clicks, num_classes, spacing)
            assert torch.allclose(batch.prompts[sample, clicks_only], drawn[clicks_only])
            for click in clicks:
                value = int(truth[tuple(int(v) for v in click.position)])
                # A positive click marks a missed voxel of its class; a negative one an annotated
                # voxel of another class (never an unannotated one).
                if click.positive:
                    assert value == click.label, click
                else:
                    assert value != click.label and value != ignore_label, (click, value)
                count += 1
    return count


def test_interactive_training_clicks_in_errors_and_gives_a_model_that_takes_clicks(tiny_dataset, monkeypatch,
                                                                                   simulated_batches):
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "clicks_from", 0.25)
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "interactive_share", 0.75)
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=8,
                              num_workers=0, seed=2)
    trainer = train_fold(TRAINER, request)

    # Both kinds of batches trained, and no clicks in the first quarter of the schedule (steps 0, 1).
    assert 0 < len(simulated_batches) < 6 and len(trainer.iteration_losses) == 8
    assert min(batch.step for batch in simulated_batches) >= 2, [batch.step for batch in simulated_batches]
    num_classes = trainer.description.num_classes
    clicks = check_simulated_clicks(simulated_batches, num_classes, trainer.plans.target_spacing)
    assert clicks >= len(simulated_batches)

    # The clicked batches' extra loss looks at the clicks' surroundings only: at least full weight
    # at a click (more where balls add up), none far from every click.
    for batch in simulated_batches:
        weights = trainer.click_weights(batch.prompts)
        for sample, sample_clicks in enumerate(batch.clicks):
            for click in sample_clicks:
                assert weights[sample][tuple(int(v) for v in click.position)] >= 1.0
            if sample_clicks:
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


IGNORE = 4  # background 0, liver 1, kidney 2, lesion 3


@pytest.fixture
def sparse_dataset(nnsam3d_folders, tiny_network, mark_unannotated) -> tuple[str, Path]:
    """The tiny phantoms with every second slice unannotated, planned and preprocessed."""
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    spec = SyntheticDatasetSpec(num_training=5, num_test=0, shape=(16, 48, 48))
    raw_dir = generate_synthetic_dataset(nnsam3d_folders.raw, spec)
    mark_unannotated(raw_dir, IGNORE)
    plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
    plans.network = plans.network.replace(**tiny_network)
    plans.save(nnsam3d_folders.preprocessed / spec.folder_name / f"{plans.plans_name}.json")
    return spec.folder_name, raw_dir


def test_interactive_training_and_evaluation_with_an_ignore_label(sparse_dataset, monkeypatch, simulated_batches,
                                                                  tmp_path, capsys):
    """Sparse annotation: the simulated user never clicks where nobody annotated, in training or in
    evaluation; the evaluation's classes are the foreground labels and its Dice counts annotated voxels."""
    dataset, raw_dir = sparse_dataset
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "clicks_from", 0.0)
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "interactive_share", 1.0)
    # Whole-case validation under an ignore label is test_ignore_label.py's; here it would only cost time.
    monkeypatch.setattr(nnSAM3DTrainer_interactive, "validate", lambda self: None)
    request = TrainingRequest(dataset=dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=4,
                              num_workers=0, seed=3)
    trainer = train_fold(TRAINER, request)
    assert trainer.description.ignore_label == IGNORE and len(simulated_batches) == 4
    assert any((batch.target == IGNORE).any() for batch in simulated_batches)
    clicks = check_simulated_clicks(simulated_batches, trainer.description.num_classes,
                                    trainer.plans.target_spacing, IGNORE)
    assert clicks >= 4

    images = tmp_path / "images"
    images.mkdir()
    case_files = sorted((raw_dir / "imagesTr").glob("*_0000.nii.gz"))[:1]
    for file in case_files:
        shutil.copy(file, images / file.name)
    clicked = []
    original_click = InteractiveSession.click
    monkeypatch.setattr(InteractiveSession, "click",
                        lambda self, *args, **kwargs: clicked.append((self, args, kwargs)) or original_click(
                            self, *args, **kwargs))
    code = evaluate_interactive_main(["-d", dataset, "-i", str(images), "-ref", str(raw_dir / "labelsTr"),
                                      "--clicks", "2", "-o", str(tmp_path / "out"), "--disable-tta", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "interactive_summary.json").read_text())
    assert list(summary["mean"]) == ["liver", "kidney", "lesion"]
    # Every evaluation click lands on an annotated voxel (input grid = the reference's grid).
    assert clicked
    reference, _ = read_volume_in_file_order(raw_dir / "labelsTr" / case_files[0].name.replace("_0000", ""))
    for session, args, _kwargs in clicked:
        voxel = np.round(np.linalg.inv(session.geometry.affine_array) @ [*args[0], 1.0])[:3].astype(int)
        assert reference[tuple(voxel)] != IGNORE
    # 0 clicks: the automatic prediction's Dice over annotated voxels, computed here independently.
    predictor = Predictor.from_model_folder(trainer.output_folder.parent, device="cpu", use_mirroring=False)
    case = summary["per_case"][0]
    image, geometry = read_volume_in_file_order(case_files[0])
    automatic = predictor.predict_volume(image, geometry.affine_array)
    annotated = reference != IGNORE
    for name, value in [("liver", 1), ("kidney", 2), ("lesion", 3)]:
        expected = dice(reference == value, (automatic == value) & annotated)
        got = case["dice"][name]["0"]
        assert (got is None and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-9)


RANK_WEIGHTS_TRAINER = '''
import torch
from nnsam3d.trainers.interactive import nnSAM3DTrainer_interactive
from nnsam3d.trainers.interactive_budget import interactive_budget, record_interactive_budget


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


def _tiny_plans_file(dataset: str) -> Path:
    return paths.preprocessed_root() / paths.resolve_dataset_name(dataset) / f"{DEFAULT_PLANS_NAME}.json"


def test_interactive_training_stops_before_training_when_the_clicked_step_exceeds_the_memory_target(tiny_dataset):
    """A plan whose target fits the click-free step of the interactive network but not the clicked
    step: the trainer stops before building anything, saying by how much and what to do."""
    plans_file = _tiny_plans_file(tiny_dataset)
    plans = Plans.load(plans_file)
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=1,
                              num_workers=0)
    config = nnSAM3DTrainer_interactive(request).configure_network(plans.network)
    click_free = estimate_training_memory(config, plans.batch_size, plans.memory.precision)
    estimate = estimate_training_memory(config, plans.batch_size, plans.memory.precision,
                                        click_rounds=nnSAM3DTrainer_interactive.max_click_rounds)
    # The prompt branch and the clicks' extra work are counted (the CUDA allowance dilutes the total).
    assert estimate.step_peak > 1.05 * click_free.step_peak
    clicked = estimate.total
    target = int((click_free.total + clicked) / 2 / SAFETY_MARGIN)
    plans.memory = dataclasses.replace(plans.memory, target_bytes=target)
    plans.save(plans_file)

    with pytest.raises(TrainingInputError) as error:
        train_fold(TRAINER, request)
    message = str(error.value)
    over = (clicked - int(SAFETY_MARGIN * target)) / 2**30
    assert str(plans_file) in message and f"{clicked / 2**30:.2f} GiB" in message and f"{over:.2f} GiB" in message
    assert "--gpu-memory-gb" in message and "-p nnSAM3DPlans_interactive" in message
    assert not (paths.fold_dir(paths.resolve_dataset_name(tiny_dataset), TRAINER, DEFAULT_PLANS_NAME, "0")
                / "checkpoint_latest.pth").exists()


def test_interactive_budget_counts_the_clicks_in_the_hours_per_fold(tiny_dataset):
    """The hours per fold the trainer logs and records grow with the share of clicked steps and
    with the rounds, from the click-free figure at no clicks."""
    plans = Plans.load(_tiny_plans_file(tiny_dataset))
    config = plans.network.replace(deep_supervision=True, prompt_channels=prompt_channels(plans.network.num_classes))
    none = interactive_budget(plans, config, interactive_share=0.0, clicks_from=0.4, max_click_rounds=3)
    half = interactive_budget(plans, config, interactive_share=0.5, clicks_from=0.4, max_click_rounds=3)
    more = interactive_budget(plans, config, interactive_share=0.5, clicks_from=0.4, max_click_rounds=5)
    assert none.fold_hours == pytest.approx(none.automatic_fold_hours)
    assert none.fold_hours < half.fold_hours < more.fold_hours
    recorded = record_interactive_budget(plans, half)
    click_free = estimate_training_memory(config, plans.batch_size, plans.memory.precision).total
    assert recorded.memory.estimate_bytes == half.estimate_bytes > click_free
    if plans.compute is not None:
        assert recorded.compute.fold_hours == pytest.approx(half.fold_hours)
    assert f"{half.fold_hours:.3g} h per fold" in half.summary()
