"""``nnSAM3DTrainer_interactive``: the same network learns to segment alone and to take clicks.

The network gets the prompt branch (:mod:`nnsam3d.model.prompt_encoder`). A share
(``interactive_share``) of the training batches simulates a user, as SAM, nnInteractive and
DeepEdit train: the network predicts the patch without prompts, then for 1 to
``max_click_rounds`` rounds a click is placed per patch in the largest error region of a class
with errors (:mod:`nnsam3d.inference.simulated_clicks`, centre-weighted draw) and the network
predicts again with every click so far and its previous prediction as the prior. Only the last
round is trained on (the earlier ones run without gradients, with the encoder's features
computed once). The other batches are click-free, so the automatic mode keeps learning.

Everything else (folds, resume, several GPUs, time budget, pseudo-Dice, validation) is the base
trainer's: validation and pseudo-Dice measure the automatic mode.
"""

from __future__ import annotations

import numpy as np
import torch

from nnsam3d.inference.click_prompts import build_prompts
from nnsam3d.inference.simulated_clicks import classes_with_errors, error_click
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.prompt_encoder import prompt_channels
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.losses import full_resolution


class nnSAM3DTrainer_interactive(nnSAM3DTrainer):
    interactive_share: float = 0.5
    """Share of the training batches with simulated clicks (the others are click-free)."""
    max_click_rounds: int = 3

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        config = super().configure_network(config)
        return config.replace(prompt_channels=prompt_channels(config.num_classes))

    def train_step(self, batch: dict) -> torch.Tensor:
        data, target = self._to_device(batch)
        # Drawn from the global generators, which checkpoints save: a resumed run draws the same.
        prompts = self.simulate_user(data, target) if np.random.random_sample() < self.interactive_share else None
        with self.optimization.precision.autocast():
            loss = self.loss(self.network(data, prompts), target)
            if prompts is None:
                # Click-free batches leave the prompt branch without gradient; DistributedDataParallel
                # expects one for every parameter every step. A zero-weighted term gives it one.
                loss = loss + 0.0 * sum(p.sum() for p in self.network_module.prompt_encoder.parameters())
        self.optimization.step(loss)
        return loss.detach()

    @torch.no_grad()
    def simulate_user(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Prompts (B, P, z, y, x) after 1..max_click_rounds simulated clicks on each patch.

        data: (B, C, z, y, x); target: (B, 1, z, y, x) labels.
        """
        network = self.network_module
        num_classes = network.config.num_classes
        spacing = self.plans.target_spacing
        reference = target[:, 0].long().cpu().numpy()
        rounds = int(np.random.randint(1, self.max_click_rounds + 1))
        with self.optimization.precision.autocast():
            features = network.encode(data)
            prediction = full_resolution(network.decode(data, features)).argmax(1)
            clicks: list[list] = [[] for _ in range(data.shape[0])]
            for round_index in range(rounds):
                predicted = prediction.cpu().numpy()
                for sample, sample_clicks in enumerate(clicks):
                    wrong = classes_with_errors(predicted[sample], reference[sample], num_classes)
                    if wrong:
                        label = wrong[int(np.random.randint(len(wrong)))]
                        click = error_click(predicted[sample], reference[sample], label, spacing, rng=np.random)
                        sample_clicks.append(click)
                prompts = torch.stack([
                    build_prompts(prediction[sample], sample_clicks, num_classes, spacing)
                    for sample, sample_clicks in enumerate(clicks)
                ])
                if round_index < rounds - 1:
                    prediction = full_resolution(network.decode(data, features, prompts)).argmax(1)
        return prompts
