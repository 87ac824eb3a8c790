"""A clicked training step of ``nnSAM3DTrainer_interactive``, run by the trainer's own code.

``ClickedStep(network, precision, batch_size, click_rounds)()`` runs
``nnSAM3DTrainer_interactive.train_step`` (encode once, a click-free decode and the simulated
user's rounds without gradient, the prompted decode with gradient, the click-weighted loss,
AdamW) on a stand-in for the trainer that holds only what the step reads. The step and the
simulated user are the trainer's methods, not copies, so the cost tests measure what training
runs. ``ClickedStep.decodes`` counts the decoder passes of the last step (1 + click rounds).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.interactive import ClickedForward, nnSAM3DTrainer_interactive
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss
from nnsam3d.trainers.optimization import Optimization, Precision, WarmupDecaySchedule, build_optimizer


def target_with_errors(batch_size: int, patch_size, num_classes: int) -> torch.Tensor:
    """(B, 1, z, y, x) labels: a box per foreground class, so that an untrained network errs and
    the simulated user clicks every round."""
    target = torch.zeros(batch_size, 1, *patch_size, dtype=torch.int16)
    z, y, x = patch_size
    for label in range(1, num_classes):
        k = label - 1
        target[:, 0, z // 4:3 * z // 4, k * y // num_classes:(k + 1) * y // num_classes, x // 4:3 * x // 4] = label
    return target


class ClickedStep:
    """Callable running one clicked step of up to ``click_rounds`` rounds (at ``batch_size``)."""

    def __init__(self, network, precision: Precision, batch_size: int, click_rounds: int):
        config = network.config
        classes = list(range(1, config.num_classes))
        self.optimizer = build_optimizer(network, 1e-4, 1e-2)
        self.decodes = 0
        decode = network.decode

        def counting_decode(*args, **kwargs):
            self.decodes += 1
            return decode(*args, **kwargs)

        network.decode = counting_decode
        trainer = SimpleNamespace(
            network_module=network,
            plans=SimpleNamespace(target_spacing=(1.0, 1.0, 1.0)),
            description=SimpleNamespace(foreground_labels=classes, ignore_label=None),
            max_click_rounds=click_rounds,
            interactive_share=1.0,
            click_loss_weight=1.0,
            loss=DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS),
            optimization=Optimization(self.optimizer, WarmupDecaySchedule(self.optimizer, 1e-4, 10, 0.1, "poly"),
                                      precision),
            clicks_have_begun=lambda: True,
        )
        trainer.simulate_user = lambda *args: nnSAM3DTrainer_interactive.simulate_user(trainer, *args)
        trainer.click_weights = lambda prompts: nnSAM3DTrainer_interactive.click_weights(trainer, prompts)
        trainer.network = ClickedForward(network, trainer.simulate_user)
        self.data = torch.randn(batch_size, config.in_channels, *config.patch_size)
        self.target = target_with_errors(batch_size, config.patch_size, config.num_classes)
        trainer._to_device = lambda batch: (batch["data"], batch["target"])
        self.trainer = trainer
        self.network = network

    def __call__(self) -> None:
        """One step; the trainer draws 1..max click rounds (``decodes - 1`` afterwards)."""
        self.decodes = 0
        nnSAM3DTrainer_interactive.train_step(self.trainer, {"data": self.data, "target": self.target})

    def existing(self) -> list[torch.Tensor]:
        """What is alive before a step: parameters, gradients, AdamW's state, the batch."""
        parameters = list(self.network.parameters())
        return [*parameters, *(p.grad for p in parameters if p.grad is not None),
                *(t for state in self.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)),
                self.data, self.target]
