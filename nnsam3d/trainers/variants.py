"""The trainer family: each variant changes one or two hooks of :class:`nnSAM3DTrainer`.

Chosen with ``nnsam3d_train ... -tr NAME``. The results of each variant go to their own
``TRAINER__PLANS`` folder, so variants can be compared on the same folds.
"""

from __future__ import annotations

from pathlib import Path

from nnsam3d.model.config import NetworkConfig
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer


class nnSAM3DTrainer_fullFinetune(nnSAM3DTrainer):
    """Everything trains, SAM's encoder included, from SAM's weights.

    A tenth of the default learning rate, the usual fine-tuning rate for a pretrained ViT: the
    default's rate would wash out SAM's features in the first epochs.
    """

    lr_with_sam = 5e-5

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        return config.replace(deep_supervision=True, trainable="full")


class nnSAM3DTrainer_noAdapters(nnSAM3DTrainer):
    """Ablation of the adapters: SAM's encoder frozen and built without adapters; only the 3D patch
    embedding, the depth position embedding and tables, and the decoder learn."""

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        return config.replace(deep_supervision=True, trainable="frozen_encoder", adapter_blocks=())


class nnSAM3DTrainer_noNormAtFullRes(nnSAM3DTrainer):
    """The lighter decoder: no InstanceNorm after the two full-resolution convolutions (which get a
    bias instead; ``NetworkConfig.norm_at_full_resolution``). Those norms run over the largest and
    narrowest tensors of the step, memory-bound work that FLOP counts do not see; every other level
    keeps nnU-Net's conv-norm-act. Its Dice and speed against the default's on the demo:
    ``benchmarks/lighter_decoder.py``."""

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        return super().configure_network(config).replace(norm_at_full_resolution=False)


class nnSAM3DTrainer_fromScratch(nnSAM3DTrainer):
    """No SAM weights: the whole network starts random and trains (the pretraining ablation)."""

    def pretrained_checkpoint(self) -> Path | None:
        return None


class nnSAM3DTrainer_1epoch(nnSAM3DTrainer):
    num_epochs = 1


class nnSAM3DTrainer_5epochs(nnSAM3DTrainer):
    num_epochs = 5


class nnSAM3DTrainer_50epochs(nnSAM3DTrainer):
    num_epochs = 50


class nnSAM3DTrainer_100epochs(nnSAM3DTrainer):
    num_epochs = 100


class nnSAM3DTrainer_fromScratch_100epochs(nnSAM3DTrainer_fromScratch):
    num_epochs = 100
