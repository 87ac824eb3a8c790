"""``nnSAM3DTrainer_interactive``: the same network learns to segment alone and to take clicks.

The network gets the prompt branch (:mod:`nnsam3d.model.prompt_encoder`). A share
(``interactive_share``) of the training batches simulates a user, as SAM, nnInteractive and
DeepEdit train: the network predicts the patch without prompts, then for 1 to
``max_click_rounds`` rounds a click is placed per patch in the largest error region of a class
with errors (:mod:`nnsam3d.interactive.simulated_user`, centre-weighted draw; never in voxels of
the ignore label, which are unannotated) and the network
predicts again with every click so far and its previous prediction as the prior. The other
batches are click-free.

Clicks begin after ``clicks_from`` of the schedule (its share of the optimiser steps, so a time
budget moves it with the schedule). Until then every batch is click-free: the first part of
training is the automatic model's, at the automatic trainer's speed, and clicks are simulated on
predictions that already look like the ones a user corrects. Clicks on an early, mostly wrong
prediction teach filling large blobs; a user mostly moves borders and removes small leaks.

A clicked batch encodes once, predicts the click-free start and the earlier rounds without
gradients, and trains on the last round's prediction with two terms: the usual loss over the
patch, and a cross-entropy weighted by the click balls (``click_loss_weight``). A click is a label
the user gives for the voxels around it; without that term those few hundred voxels are drowned
in the patch-wide loss, and the network learns to reproduce the prior rather than follow a click
that moves a border by a voxel or two (measured on the demo: the clicked voxel itself often
stayed wrong, and the simulated user clicked it again).

Before training, the clicked step is checked against the plan's memory target and its hours per
fold are logged and kept in the plans (``interactive_budget``): the planner plans the click-free step.

Everything else (folds, resume, several GPUs, time budget, pseudo-Dice, validation) is the base
trainer's: validation and pseudo-Dice measure the automatic mode.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from nnsam3d.interactive.click_prompts import build_prompts
from nnsam3d.interactive.simulated_user import classes_with_errors, error_click
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.interactive_budget import check_interactive_budget, interactive_budget, record_interactive_budget
from nnsam3d.trainers.losses import full_resolution, weighted_cross_entropy


class ClickedForward(nn.Module):
    """The forward pass of a training step, with or without simulated clicks.

    forward(data): the network's output (automatic mode; validation and click-free batches).
    forward(data, target): ``(prompted outputs, prompts)``: encode once, predict without prompts
    (no gradient), let ``simulate_user(data, target, features, automatic)`` place the clicks,
    predict with them. One forward call, so that DistributedDataParallel sees the whole step.
    """

    def __init__(self, network: nn.Module, simulate_user: Callable):
        super().__init__()
        self.network = network
        self.simulate_user = simulate_user

    def forward(self, data: torch.Tensor, target: torch.Tensor | None = None):
        if target is None:
            return self.network(data)
        features = self.network.encode(data)
        with torch.no_grad():
            automatic = self.network.decode(data, features)
        prompts = self.simulate_user(data, target, features, automatic)
        return self.network.decode(data, features, prompts), prompts


class nnSAM3DTrainer_interactive(nnSAM3DTrainer):
    interactive_share: float = 0.5
    """Share of the training batches with simulated clicks once clicks have begun (the others are click-free)."""
    clicks_from: float = 0.4
    """Share of the schedule's optimiser steps before the first clicked batch."""
    max_click_rounds: int = 3
    click_loss_weight: float = 1.0
    """Weight of the cross-entropy near the clicks (weighted by the click balls) in clicked batches."""

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        config = super().configure_network(config)
        return config.replace(prompt_channels=prompt_channels(config.num_classes))

    def initialize(self) -> None:
        """Check the clicked step against the plan's memory target before building anything (a
        resumed run was checked when it started), and record its costs in the plans it keeps."""
        if self.resume_from is None:
            budget = interactive_budget(self.plans, self.configure_network(self.plans.network),
                                        self.interactive_share, self.clicks_from, self.max_click_rounds)
            check_interactive_budget(budget, self.preprocessed_dir / f"{self.request.plans_name}.json",
                                     self.dataset_name)
            self.log.message(budget.summary())
            target = self.plans.compute.target_fold_hours if self.plans.compute is not None else None
            if target is not None and budget.fold_hours > target:
                self.log.message(f"warning: interactive training is estimated at {budget.fold_hours:.1f} h per fold, "
                                 f"above the plan's compute target of {target:.1f} h")
            self.plans = record_interactive_budget(self.plans, budget)
        super().initialize()

    def training_forward_module(self) -> nn.Module:
        return ClickedForward(self.network_module, self.simulate_user)

    def train_step(self, batch: dict) -> torch.Tensor:
        data, target = self._to_device(batch)
        # Drawn from the global generators, which checkpoints save: a resumed run draws the same.
        clicked = np.random.random_sample() < self.interactive_share and self.clicks_have_begun()
        with self.optimization.precision.autocast():
            if clicked:
                prompted, prompts = self.network(data, target)
                loss = self.loss(prompted, target) + self.click_loss_weight * weighted_cross_entropy(
                    full_resolution(prompted), target, self.click_weights(prompts), self.description.ignore_label)
            else:
                loss = self.loss(self.network(data), target)
                # Click-free batches leave the prompt branch without gradient; DistributedDataParallel
                # expects one for every parameter every step. A zero-weighted term gives it one.
                loss = loss + 0.0 * sum(p.sum() for p in self.network_module.prompt_encoder.parameters())
        self.optimization.step(loss)
        return loss.detach()

    def clicks_have_begun(self) -> bool:
        schedule = self.optimization.schedule
        return schedule.step_count >= self.clicks_from * schedule.total_steps

    def click_weights(self, prompts: torch.Tensor) -> torch.Tensor:
        """(B, z, y, x): the strongest click ball (positive or negative, any class) at each voxel."""
        num_classes = self.network_module.config.num_classes
        click_channels = [prompt_channel(kind, label, num_classes) for kind in ("positive", "negative")
                          for label in range(1, num_classes)]
        return prompts[:, click_channels].amax(dim=1)

    @torch.no_grad()
    def simulate_user(self, data: torch.Tensor, target: torch.Tensor, features: list[torch.Tensor],
                      automatic) -> torch.Tensor:
        """Prompts (B, P, z, y, x) after 1..max_click_rounds simulated clicks on each patch.

        data: (B, C, z, y, x); target: (B, 1, z, y, x) labels; features: ``encode(data)``;
        automatic: the network's click-free output for ``data``.
        """
        network = self.network_module
        num_classes = network.config.num_classes
        spacing = self.plans.target_spacing
        reference = target[:, 0].long().cpu().numpy()
        classes, ignore_label = self.description.foreground_labels, self.description.ignore_label
        rounds = int(np.random.randint(1, self.max_click_rounds + 1))
        prediction = full_resolution(automatic).argmax(1)
        clicks: list[list] = [[] for _ in range(data.shape[0])]
        for round_index in range(rounds):
            predicted = prediction.cpu().numpy()
            for sample, sample_clicks in enumerate(clicks):
                wrong = classes_with_errors(predicted[sample], reference[sample], classes, ignore_label)
                if wrong:
                    label = wrong[int(np.random.randint(len(wrong)))]
                    click = error_click(predicted[sample], reference[sample], label, spacing, rng=np.random,
                                        ignore_label=ignore_label)
                    sample_clicks.append(click)
            prompts = torch.stack([
                build_prompts(prediction[sample], sample_clicks, num_classes, spacing)
                for sample, sample_clicks in enumerate(clicks)
            ])
            if round_index < rounds - 1:
                prediction = full_resolution(network.decode(data, features, prompts)).argmax(1)
        return prompts
