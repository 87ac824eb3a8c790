"""The lighter decoder (``nnSAM3DTrainer_noNormAtFullRes``): trained, saved, and rebuilt for
prediction without the full-resolution norms; written so that an nnsam3d that predates it refuses
it instead of building the default decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnsam3d.inference.ensemble_loading import load_ensemble
from nnsam3d.model import config as config_module
from nnsam3d.model.config import NetworkConfig
from nnsam3d.trainers import checkpointing
from nnsam3d.trainers.registry import get_trainer_class
from nnsam3d.trainers.request import TrainingRequest
from tests.trainers.rebuilt_network import assert_rebuilt_network_predicts_the_same


def full_resolution_norms(network: nn.Module) -> int:
    decoder = network.decoder
    return sum(isinstance(m, nn.InstanceNorm3d) for m in [*decoder.stem[0].modules(), *decoder.stages[0].modules()])


def test_the_variant_trains_and_its_checkpoint_rebuilds_the_same_network(tiny_dataset):
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=1)
    trainer = get_trainer_class("nnSAM3DTrainer_noNormAtFullRes")(request)
    trainer.initialize()
    try:
        network = trainer.network_module
        assert network.config.norm_at_full_resolution is False
        assert full_resolution_norms(network) == 0
        assert network.decoder.stem[1][1].__class__ is nn.InstanceNorm3d  # the other levels keep theirs
        first_conv = network.decoder.stem[0][0]
        before = first_conv.bias.detach().clone()
        trainer.train_step(next(trainer.train_stream))
        assert not torch.equal(first_conv.bias, before)  # the bias that replaces the norm learns
        trainer.save_checkpoint(checkpointing.FINAL)
    finally:
        trainer._stop_streams()

    ensemble = load_ensemble([trainer.output_folder.parent], ["0"], checkpointing.FINAL)
    rebuilt = ensemble.networks[0].eval()
    assert ensemble.plans.network.norm_at_full_resolution is False
    assert full_resolution_norms(rebuilt) == 0
    assert_rebuilt_network_predicts_the_same(network, rebuilt)


def test_the_default_decoder_is_written_as_version_1_and_the_lighter_as_version_2(monkeypatch):
    default = NetworkConfig(backbone="vit_tiny", patch_size=(16, 64, 64))
    light = default.replace(norm_at_full_resolution=False)
    assert default.to_json()["schema_version"] == 1
    assert light.to_json()["schema_version"] == 2
    assert NetworkConfig.from_json(light.to_json()) == light
    assert NetworkConfig.from_json(default.to_json()) == default != light

    # An nnsam3d that reads only version 1 reads the default and refuses the lighter decoder.
    monkeypatch.setattr(config_module, "NETWORK_CONFIG_SCHEMA_VERSION", 1)
    assert NetworkConfig.from_json(default.to_json()) == default
    with pytest.raises(ValueError, match="schema version 2.*Update nnsam3d"):
        NetworkConfig.from_json(light.to_json())


def test_a_flag_that_is_not_a_boolean_is_refused():
    with pytest.raises(ValueError, match="norm_at_full_resolution must be true or false"):
        NetworkConfig(backbone="vit_tiny", patch_size=(16, 64, 64), norm_at_full_resolution="no")
