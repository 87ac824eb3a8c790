"""Model folders ensemble only when their networks see the same thing: otherwise a clear refusal.
Folds rebuilt from one SAM file hold its frozen tensors once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.inference.ensemble_loading import IncompatibleModelsError, load_ensemble
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.checkpoint_file import ModelCheckpoint, load_checkpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.network import build_network
from nnsam3d.model.sam_checkpoints import SamSource
from nnsam3d.model.sam_reference import build_reference_sam
from nnsam3d.model.trained_weights import (
    frozen_parameter_names,
    rebuild_trained_network,
    share_frozen_tensors,
    trained_state_dict,
)

LABELS = {"background": 0, "liver": 1, "kidney": 2, "lesion": 3}


def _description(labels=LABELS) -> DatasetDescription:
    return DatasetDescription({"0": "CT"}, dict(labels), 1, ".nii.gz")


def test_folders_with_the_same_preprocessing_and_labels_load_as_one_ensemble(make_plans, make_random_folds, tmp_path):
    plans = make_plans()
    make_random_folds(plans, _description(), tmp_path / "a", folds=(0, 1))
    make_random_folds(plans, _description(), tmp_path / "b", folds=(0,), seed=7)
    ensemble = load_ensemble([tmp_path / "a", tmp_path / "b"], None, "checkpoint_final.pth")
    assert len(ensemble.networks) == 3
    assert [path.parent.parent.name for path in ensemble.checkpoint_files] == ["a", "a", "b"]


@pytest.mark.parametrize("difference", ["target spacing", "labels"])
def test_folders_that_disagree_are_refused_naming_both_checkpoints(make_plans, make_random_folds, tmp_path, difference):
    make_random_folds(make_plans(), _description(), tmp_path / "a", folds=(0,))
    if difference == "target spacing":
        make_random_folds(make_plans(target_spacing=(2.0, 1.0, 1.0)), _description(), tmp_path / "b", folds=(0,))
    else:
        renamed = {"background": 0, "liver": 1, "spleen": 2, "lesion": 3}
        make_random_folds(make_plans(), _description(renamed), tmp_path / "b", folds=(0,))
    with pytest.raises(IncompatibleModelsError) as refused:
        Predictor.from_model_folders([tmp_path / "a", tmp_path / "b"], device="cpu")
    message = str(refused.value)
    assert str(tmp_path / "a" / "fold_0" / "checkpoint_final.pth") in message
    assert str(tmp_path / "b" / "fold_0" / "checkpoint_final.pth") in message
    assert "cannot be ensembled" in message


def _slim_folds(plans, folder, sam_file, folds=(0, 1, 2)) -> None:
    """Folds of a frozen-encoder model as the trainer writes them: rebuilt from ``sam_file``, each
    with its own trained tensors (adapters, decoder, 3D embeddings), stored without the frozen ones."""
    for fold in folds:
        network = build_network(plans.network, sam_file)
        generator = torch.Generator().manual_seed(100 + fold)
        with torch.no_grad():
            for parameter in network.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        weights, source = trained_state_dict(network)
        save_checkpoint(ModelCheckpoint("nnSAM3DTrainer", str(fold), 1, plans.to_json(), _description().to_json(),
                                        weights, sam_source=source.to_json()),
                        folder / f"fold_{fold}" / "checkpoint_final.pth")


def _distinct_storages(networks) -> int:
    return len({parameter.data_ptr() for network in networks for parameter in network.parameters()})


def test_folds_from_one_sam_file_share_its_frozen_tensors_and_predict_as_separate_copies(make_plans, tmp_path):
    sam_file = tmp_path / "sam_vit_tiny.pth"
    torch.manual_seed(3)
    torch.save(build_reference_sam(get_backbone("vit_tiny")).state_dict(), sam_file)
    plans = make_plans()
    plans.network = plans.network.replace(trainable="adapters", adapter_blocks=(0, 1))
    _slim_folds(plans, tmp_path / "model", sam_file)

    predictor = Predictor.from_model_folder(tmp_path / "model", device="cpu", use_mirroring=False,
                                            sam_checkpoint=sam_file)
    separate = [  # the same checkpoints, each fold with its own copy of everything
        rebuild_trained_network(plans.network.replace(deep_supervision=False), checkpoint.network_weights,
                                SamSource.from_json(checkpoint.sam_source), source=str(path), sam_checkpoint=sam_file)
        for path in predictor.checkpoint_files for checkpoint in [load_checkpoint(path)]
    ]
    volume = np.random.default_rng(0).normal(size=(1, 10, 40, 36)).astype(np.float32)
    unshared = Predictor(separate, predictor.plans, predictor.description, "cpu", use_mirroring=False)
    np.testing.assert_allclose(predictor.predict_preprocessed(volume), unshared.predict_preprocessed(volume),
                               rtol=0, atol=1e-6)
    first = predictor.networks[0]
    frozen = frozen_parameter_names(first)
    parameters = dict(first.named_parameters())
    assert frozen and len(frozen) < len(parameters)
    assert _distinct_storages(separate) == 3 * len(parameters)
    assert _distinct_storages(predictor.networks) == len(frozen) + 3 * (len(parameters) - len(frozen))
    for name in frozen:
        assert all(network.get_parameter(name) is parameters[name] for network in predictor.networks)
    for name in set(parameters) - frozen:  # each fold keeps its own trained tensors
        assert not torch.equal(predictor.networks[1].get_parameter(name), parameters[name]), name


    # Another SAM file, other frozen tensors: nothing is shared.
    other_file = tmp_path / "sam_vit_tiny_other.pth"
    torch.manual_seed(4)
    torch.save(build_reference_sam(get_backbone("vit_tiny")).state_dict(), other_file)
    other = build_network(plans.network, other_file)
    assert share_frozen_tensors(other, first) == 0
    assert _distinct_storages([other, first]) == 2 * len(parameters)
