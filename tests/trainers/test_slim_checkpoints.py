"""Slim checkpoints: only what training changes, plus the SAM file's name and SHA-256.

A slim checkpoint must predict exactly like the full one, name the SAM file and its hash when it
is missing or different, and stay small for vit_b (measured on a real file of vit_b's trained
tensors, the frozen encoder built on the meta device).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nnsam3d import paths
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.checkpoint_file import CheckpointFormatError, ModelCheckpoint, load_checkpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import MedSAM3D, build_network, count_parameters
from nnsam3d.model.sam_checkpoints import SamSource, file_sha256
from nnsam3d.model.sam_reference import build_reference_sam
from nnsam3d.model.trained_weights import SamSourceError, frozen_parameter_names, trained_state_dict
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers import checkpointing
from nnsam3d.trainers.registry import get_trainer_class
from nnsam3d.trainers.request import TrainingInputError, TrainingRequest

VIT_B_SLIM_LIMIT_BYTES = 30 * 10**6


def _plans_and_description(dataset: str) -> tuple[Plans, DatasetDescription]:
    folder = paths.preprocessed_dataset_dir(dataset)
    plans = Plans.load(folder / "nnsam3d_plans.json")
    return plans, DatasetDescription.from_file(folder / "dataset.json")


def _write_model(results, name: str, plans: Plans, description: DatasetDescription, network, slim: bool):
    """One fold folder holding ``network`` as a slim checkpoint (the trainer's writer) or as a
    complete one (what every checkpoint held before)."""
    path = results / name / "fold_0" / checkpointing.FINAL
    path.parent.mkdir(parents=True)
    arguments = dict(trainer_name="nnSAM3DTrainer", fold="0", epoch=1, plans=plans.to_json(),
                     dataset_json=description.to_json())
    if slim:
        checkpointing.write_training_checkpoint(path, network=network, training_state={}, **arguments)
    else:
        save_checkpoint(ModelCheckpoint(network_weights=network.state_dict(), **arguments), path)
    return path


def _trained_looking_network(config: NetworkConfig, sam_file) -> MedSAM3D:
    """Built from the SAM file, its trainable tensors moved away from their start (as training would)."""
    network = build_network(config, sam_file)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return network


@pytest.mark.parametrize("backbone", ["vit_tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_a_slim_checkpoint_predicts_exactly_like_the_full_one(backbone, tiny_dataset, nnsam3d_folders):
    sam = build_reference_sam(get_backbone(backbone))
    sam_file = nnsam3d_folders.sam_checkpoints / f"sam_{backbone}_random.pth"
    torch.save(sam.state_dict(), sam_file)
    del sam
    plans, description = _plans_and_description(tiny_dataset)
    config = plans.network.replace(backbone=backbone, patch_size=(8, 32, 32), token_size=(4, 16, 16),
                                   window_size=(2, 2, 2), adapter_blocks=(0, 1), trainable="adapters")
    plans = dataclasses.replace(plans, network=config)
    network = _trained_looking_network(config, sam_file)

    slim_path = _write_model(nnsam3d_folders.results, "slim", plans, description, network, slim=True)
    full_path = _write_model(nnsam3d_folders.results, "full", plans, description, network, slim=False)
    slim = load_checkpoint(slim_path)
    assert slim.sam_source == {"file_name": sam_file.name, "sha256": file_sha256(sam_file)}
    assert set(slim.network_weights) == set(network.state_dict()) - frozen_parameter_names(network)
    assert any(".adapter." in name for name in slim.network_weights)
    assert not any(name.endswith("attn.qkv.weight") for name in slim.network_weights)
    frozen_bytes = sum(network.state_dict()[name].nbytes for name in frozen_parameter_names(network))
    assert full_path.stat().st_size - slim_path.stat().st_size > 0.95 * frozen_bytes

    # Found in the SAM checkpoint folder by its recorded name and hash.
    predictions = {}
    for name in ("slim", "full"):
        predictor = Predictor.from_model_folder(nnsam3d_folders.results / name, device="cpu", use_mirroring=False)
        volume = np.random.default_rng(0).normal(size=(1, 8, 40, 36)).astype(np.float32)
        predictions[name] = predictor.predict_preprocessed(volume)
    assert np.array_equal(predictions["slim"], predictions["full"])
    # ... and the frozen part matters: another SAM file would give another answer.
    assert predictions["slim"].std() > 0


def test_a_missing_or_different_sam_file_is_named_with_its_hash(tiny_dataset, nnsam3d_folders, sam_file_tiny):
    plans, description = _plans_and_description(tiny_dataset)
    config = plans.network.replace(adapter_blocks=(0,), trainable="adapters")
    plans = dataclasses.replace(plans, network=config)
    network = _trained_looking_network(config, sam_file_tiny)
    _write_model(nnsam3d_folders.results, "slim", plans, description, network, slim=True)
    digest = file_sha256(sam_file_tiny)
    model = nnsam3d_folders.results / "slim"

    with pytest.raises(SamSourceError, match=f"{sam_file_tiny.name} with SHA-256 {digest}.*not found"):
        Predictor.from_model_folder(model, device="cpu")
    # A file of the same name with other bytes is refused, its own hash named.
    impostor = nnsam3d_folders.sam_checkpoints / sam_file_tiny.name
    torch.save(build_reference_sam(get_backbone("vit_tiny")).state_dict(), impostor)
    with pytest.raises(SamSourceError, match=f"{impostor} has SHA-256 {file_sha256(impostor)}"):
        Predictor.from_model_folder(model, device="cpu")
    # The right file, under any name, given explicitly.
    predictor = Predictor.from_model_folder(model, device="cpu", sam_checkpoint=sam_file_tiny)
    assert torch.equal(predictor.networks[0].encoder.blocks[0].attn.qkv.weight,
                       network.encoder.blocks[0].attn.qkv.weight)


@pytest.fixture
def sam_file_tiny(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "elsewhere" / "my_sam_tiny.pth"
    path.parent.mkdir()
    torch.save(build_reference_sam(get_backbone("vit_tiny")).state_dict(), path)
    return path


@pytest.mark.parametrize("trainable", ["full"])
def test_networks_that_train_everything_are_stored_whole(trainable, sam_file_tiny):
    config = NetworkConfig(backbone="vit_tiny", patch_size=(8, 32, 32), adapter_blocks=(0,), trainable=trainable)
    from_sam = build_network(config, sam_file_tiny)  # fine-tuning
    weights, source = trained_state_dict(from_sam)
    assert source is None and weights.keys() == from_sam.state_dict().keys()
    weights, source = trained_state_dict(build_network(config))  # from scratch
    assert source is None and weights.keys() == from_sam.state_dict().keys()
    frozen = build_network(config.replace(trainable="adapters"), sam_file_tiny)
    weights, source = trained_state_dict(frozen)
    assert source == SamSource(sam_file_tiny.name, file_sha256(sam_file_tiny))
    assert len(weights) < len(frozen.state_dict())


def test_vit_b_slim_checkpoint_file_is_under_30_mb(tmp_path):
    """vit_b at the default adapter setting (adapters in all 12 blocks): the frozen encoder built on
    the meta device, the trained tensors materialised and written with the trainer's writer."""
    config = NetworkConfig(backbone="vit_b", patch_size=(32, 128, 128), adapter_blocks=tuple(range(12)),
                           trainable="adapters", num_classes=14)
    with torch.device("meta"):
        network = MedSAM3D(config)
    network.sam_source = SamSource("sam_vit_b_01ec64.pth", get_backbone("vit_b").checkpoint_sha256)
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name not in frozen_parameter_names(network))
    counts = count_parameters(network)
    assert 5e6 < counts.trainable < 6.5e6 and counts.total > 90e6

    weights, source = trained_state_dict(network)
    assert sum(t.numel() for t in weights.values()) == counts.trainable  # the module has no buffers
    path = tmp_path / checkpointing.FINAL
    save_checkpoint(ModelCheckpoint("nnSAM3DTrainer", "0", 250, {}, {},
                                    {name: torch.zeros(t.shape, dtype=t.dtype) for name, t in weights.items()},
                                    sam_source=source.to_json()), path)
    size = path.stat().st_size
    assert size <= VIT_B_SLIM_LIMIT_BYTES, f"{size / 1e6:.1f} MB"
    assert size > 4 * counts.trainable  # every trained tensor is in it
    full_bytes = 4 * counts.total
    print(f"vit_b slim checkpoint {size / 1e6:.1f} MB; full state_dict {full_bytes / 1e6:.0f} MB")


def test_final_checkpoint_is_the_model_latest_carries_the_resume_state(tiny_dataset, tiny_sam_checkpoint):
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", sam_checkpoint=str(tiny_sam_checkpoint))
    trainer = get_trainer_class("nnSAM3DTrainer")(request)
    trainer.initialize()
    trainer._stop_streams()
    trainer.save_checkpoint(checkpointing.FINAL)
    final = load_checkpoint(trainer.output_folder / checkpointing.FINAL)
    assert checkpointing.RESUME_STATE_KEY not in final.training_state
    assert final.training_state["started_from_sam"] and final.sam_source["file_name"] == tiny_sam_checkpoint.name
    # A final checkpoint alone is a model, not a point to resume from.
    with pytest.raises(TrainingInputError, match="not the optimiser state"):
        checkpointing.find_resume_point(trainer.output_folder, validation_only=False, continue_training=True)
    trainer.save_checkpoint(checkpointing.LATEST)
    point = checkpointing.find_resume_point(trainer.output_folder, validation_only=False, continue_training=True)
    assert point.path.name == checkpointing.LATEST


def test_old_full_checkpoints_load_and_unknown_versions_are_refused(tiny_dataset, nnsam3d_folders, tmp_path):
    plans, description = _plans_and_description(tiny_dataset)
    network = build_network(plans.network.replace(deep_supervision=False))
    content = ModelCheckpoint("nnSAM3DTrainer", "0", 3, plans.to_json(), description.to_json(),
                              network.state_dict()).to_dict()
    del content["sam_source"]
    fold = nnsam3d_folders.results / "old" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({**content, "schema_version": 1}, fold / checkpointing.FINAL)
    predictor = Predictor.from_model_folder(fold.parent, device="cpu")
    for name, tensor in network.state_dict().items():
        assert torch.equal(predictor.networks[0].state_dict()[name], tensor)
    torch.save({**content, "schema_version": 3}, tmp_path / "future.pth")
    with pytest.raises(CheckpointFormatError, match="future.pth: checkpoint schema version 3"):
        load_checkpoint(tmp_path / "future.pth")
