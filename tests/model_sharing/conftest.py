"""Fixtures of the model sharing tests: a model folder of random-weight folds to export, install
and predict with (everything real but the weights), and that model exported to a zip."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.trainers.registry import DEFAULT_TRAINER


@dataclass
class RandomModel:
    """model_dir: ``results/DatasetXXX_Name/TRAINER__PLANS`` with folds 0 and 1; inputs: a folder
    of two cases to predict."""

    dataset: str
    model_dir: Path
    inputs: Path
    description: DatasetDescription


@pytest.fixture(scope="module")
def random_model(module_dataset, tmp_path_factory) -> RandomModel:
    dataset, root = module_dataset
    plans = Plans.load(root / "preprocessed" / dataset / f"{DEFAULT_PLANS_NAME}.json")
    description = DatasetDescription.from_file(root / "raw" / dataset / "dataset.json")
    model_dir = tmp_path_factory.mktemp("model") / "results" / dataset / f"{DEFAULT_TRAINER}__{DEFAULT_PLANS_NAME}"
    for fold in (0, 1):
        torch.manual_seed(fold)
        network = build_network(plans.network)
        save_checkpoint(ModelCheckpoint(DEFAULT_TRAINER, str(fold), 1, plans.to_json(), description.to_json(),
                                        network.state_dict()), model_dir / f"fold_{fold}" / "checkpoint_final.pth")
    inputs = model_dir.parents[2] / "inputs"
    inputs.mkdir()
    for image in sorted((root / "raw" / dataset / "imagesTr").glob("*_0000.nii.gz"))[:2]:
        shutil.copyfile(image, inputs / image.name)
    return RandomModel(dataset, model_dir, inputs, description)
