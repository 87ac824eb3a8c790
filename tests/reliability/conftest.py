"""Fixtures of the reliability tests: a small raw dataset to break, a random-weight model to predict with."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnsam3d import paths
from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.trainers.registry import DEFAULT_TRAINER

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset

SMALL_SPEC = SyntheticDatasetSpec(num_training=3, num_test=0, shape=(12, 32, 32))


@pytest.fixture
def small_raw_dataset(nnsam3d_folders) -> Path:
    """Three small CT-like cases (Dataset990_SyntheticCT) in this test's own raw folder."""
    return generate_synthetic_dataset(nnsam3d_folders.raw, SMALL_SPEC)


@dataclass
class RandomModel:
    """A model folder with one random-weight fold (the tiny dataset's plans) and a folder of
    three of its training images to predict."""

    dataset: str
    inputs: Path
    case_ids: list[str]
    plans: Plans


@pytest.fixture
def random_model(tiny_dataset, nnsam3d_folders, tmp_path) -> RandomModel:
    """Predicting needs a model, not a good one: random weights keep the tests fast."""
    plans = Plans.load(nnsam3d_folders.preprocessed / tiny_dataset / f"{DEFAULT_PLANS_NAME}.json")
    description = DatasetDescription.from_file(nnsam3d_folders.raw / tiny_dataset / "dataset.json")
    torch.manual_seed(0)
    network = build_network(plans.network)
    model_dir = paths.training_output_dir(tiny_dataset, DEFAULT_TRAINER, DEFAULT_PLANS_NAME)
    save_checkpoint(ModelCheckpoint(DEFAULT_TRAINER, "0", 1, plans.to_json(), description.to_json(),
                                    network.state_dict()), model_dir / "fold_0" / "checkpoint_final.pth")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = sorted((nnsam3d_folders.raw / tiny_dataset / "imagesTr").glob("*_0000.nii.gz"))[:3]
    for image in images:
        shutil.copyfile(image, inputs / image.name)
    return RandomModel(tiny_dataset, inputs, [image.name[: -len("_0000.nii.gz")] for image in images], plans)
