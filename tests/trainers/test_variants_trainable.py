"""After one training step, exactly the parameters a variant declares trainable have moved."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.network import parameter_is_trainable
from nnsam3d.model.sam_checkpoints import load_sam_encoder_state
from nnsam3d.model.trained_weights import SamSourceError
from nnsam3d.trainers.request import TrainingRequest
from nnsam3d.trainers.registry import get_trainer_class

VARIANTS = {
    "nnSAM3DTrainer": "adapters",
    "nnSAM3DTrainer_fullFinetune": "full",
    "nnSAM3DTrainer_noAdapters": "frozen_encoder",
    "nnSAM3DTrainer_fromScratch": "full",
    "nnSAM3DTrainer_noNormAtFullRes": "adapters",
}


def _one_step(trainer_name: str, dataset: str, sam_checkpoint) -> tuple:
    request = TrainingRequest(dataset=dataset, fold="0", device="cpu", sam_checkpoint=str(sam_checkpoint),
                              num_epochs=1, iterations_per_epoch=1)
    trainer = get_trainer_class(trainer_name)(request)
    trainer.initialize()
    try:
        network = trainer.network_module
        before = {name: p.detach().clone() for name, p in network.named_parameters()}
        trainer.train_step(next(trainer.train_stream))
    finally:
        trainer._stop_streams()
    return trainer, network, before


@pytest.mark.parametrize("trainer_name", list(VARIANTS))
def test_one_step_moves_only_the_declared_trainable_parameters(trainer_name, tiny_dataset, tiny_sam_checkpoint):
    trainer, network, before = _one_step(trainer_name, tiny_dataset, tiny_sam_checkpoint)
    assert network.config.trainable == VARIANTS[trainer_name]
    parameters = dict(network.named_parameters())
    declared = {name for name in parameters if parameter_is_trainable(name, network.config)}
    assert declared == {name for name, p in parameters.items() if p.requires_grad}
    changed = {name for name, p in parameters.items() if not torch.equal(p, before[name])}
    frozen = set(parameters) - declared

    assert not (changed & frozen), f"frozen parameters changed: {sorted(changed & frozen)[:5]}"
    assert all(parameters[name].grad is None for name in frozen)
    # Every declared parameter took part in the step; those with a non-zero gradient moved.
    # (An adapter's down-projection gets a zero gradient in the very first step because its
    # up-projection starts at zero, so it may legitimately stay put once.)
    assert all(parameters[name].grad is not None for name in declared)
    assert {n for n in declared if parameters[n].grad.abs().sum() > 0} <= changed
    assert any(name.startswith("decoder.") for name in changed)
    assert any("patch_embed" in name for name in changed)

    names = set(parameters)
    sam_block_weights = {n for n in names if n.startswith("encoder.blocks.") and n.endswith("attn.qkv.weight")}
    assert sam_block_weights
    if VARIANTS[trainer_name] == "adapters":
        assert any(".adapter." in n for n in changed)
        assert not (sam_block_weights & declared)
    elif VARIANTS[trainer_name] == "frozen_encoder":
        assert not any(".adapter." in n for n in names)  # built without adapters
        assert not (sam_block_weights & declared)
    else:
        assert sam_block_weights <= changed


@pytest.mark.parametrize("trainer_name", ["nnSAM3DTrainer", "nnSAM3DTrainer_fromScratch"])
def test_sam_weights_are_loaded_unless_training_from_scratch(trainer_name, tiny_dataset, tiny_sam_checkpoint):
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", sam_checkpoint=str(tiny_sam_checkpoint))
    trainer = get_trainer_class(trainer_name)(request)
    trainer.initialize()
    trainer._stop_streams()
    sam = load_sam_encoder_state(tiny_sam_checkpoint)
    loaded = torch.equal(trainer.network_module.encoder.blocks[0].attn.qkv.weight, sam["blocks.0.attn.qkv.weight"])
    assert loaded == (trainer_name == "nnSAM3DTrainer")
    assert (trainer.pretrained_path is not None) == loaded


def test_vit_tiny_without_a_checkpoint_trains_everything_from_scratch(tiny_dataset):
    trainer = get_trainer_class("nnSAM3DTrainer")(TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu"))
    assert trainer.pretrained_path is None
    assert trainer.configure_network(trainer.plans.network).trainable == "full"
    assert trainer.peak_learning_rate() == trainer.lr_from_scratch


def test_resuming_a_run_that_started_from_sam_keeps_its_network_and_learning_rate(tiny_dataset, tiny_sam_checkpoint):
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", sam_checkpoint=str(tiny_sam_checkpoint))
    first = get_trainer_class("nnSAM3DTrainer")(request)
    first.initialize()
    first._stop_streams()
    first.save_checkpoint("checkpoint_latest.pth")
    # The checkpoint is slim: resuming rebuilds the frozen encoder from the same SAM file.
    without_sam = get_trainer_class("nnSAM3DTrainer")(TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu",
                                                                      continue_training=True))
    with pytest.raises(SamSourceError, match=f"{tiny_sam_checkpoint.name} with SHA-256"):
        without_sam.initialize()
    resumed = get_trainer_class("nnSAM3DTrainer")(TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu",
                                                                  continue_training=True,
                                                                  sam_checkpoint=str(tiny_sam_checkpoint)))
    resumed.initialize()
    resumed._stop_streams()
    assert resumed.pretrained_path is None and resumed.starts_from_sam
    assert resumed.network_module.config.trainable == "adapters"
    assert resumed.optimization.schedule.peak == resumed.lr_with_sam
    for name, tensor in first.network_module.state_dict().items():
        assert torch.equal(resumed.network_module.state_dict()[name], tensor)
