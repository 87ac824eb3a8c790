"""Shared fixtures: isolated nnsam3d folders and small synthetic datasets."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnsam3d import paths
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.sam_checkpoints import SAM_CHECKPOINT_VARIABLE
from nnsam3d.schemas.plans import ChannelNormalization, MemoryBudget, Plans

# CI has two cores; more threads only add contention.
torch.set_num_threads(2)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@dataclass
class Folders:
    raw: Path
    preprocessed: Path
    results: Path
    sam_checkpoints: Path


FOLDER_VARIABLES = (
    (paths.RAW_VARIABLE, "raw"),
    (paths.PREPROCESSED_VARIABLE, "preprocessed"),
    (paths.RESULTS_VARIABLE, "results"),
    (paths.SAM_CHECKPOINT_DIR_VARIABLE, "sam_checkpoints"),
)


def point_folders_at(root: Path, patch: pytest.MonkeyPatch) -> Folders:
    """Point the nnSAM3D folder variables (and the SAM cache) at ``root/raw``, ``root/preprocessed``,
    ... (created), until ``patch`` is undone."""
    for variable, name in FOLDER_VARIABLES:
        (root / name).mkdir(exist_ok=True)
        patch.setenv(variable, str(root / name))
    # These would reach past ``root``: nnUNet_raw stands in for an unset raw folder,
    # nnUNet_preprocessed may hold nnU-Net's splits_final.json, and the
    # SAM checkpoint variable names a file anywhere.
    patch.delenv(paths.RAW_FALLBACK_VARIABLE, raising=False)
    patch.delenv(paths.NNUNET_PREPROCESSED_VARIABLE, raising=False)
    patch.delenv(SAM_CHECKPOINT_VARIABLE, raising=False)
    return Folders(raw=root / "raw", preprocessed=root / "preprocessed", results=root / "results",
                   sam_checkpoints=root / "sam_checkpoints")


@pytest.fixture(scope="session")
def point_folders():
    """:func:`point_folders_at`, for the fixtures of any scope (test modules and conftests cannot
    import this conftest under --import-mode=importlib)."""
    return point_folders_at


@pytest.fixture
def nnsam3d_folders(tmp_path, monkeypatch) -> Folders:
    """Point nnSAM3D_raw / _preprocessed / _results (and the SAM cache) at fresh temporary folders."""
    return point_folders_at(tmp_path, monkeypatch)


@pytest.fixture
def small_ct_dataset(nnsam3d_folders) -> Path:
    """A 6-case anisotropic CT-like dataset (Dataset990_SyntheticCT) with mixed orientations."""
    spec = SyntheticDatasetSpec(num_training=6, num_test=2, shape=(16, 48, 48))
    return generate_synthetic_dataset(nnsam3d_folders.raw, spec)


DATASET = "Dataset990_SyntheticCT"
TINY_NETWORK = {"patch_size": (16, 32, 32), "adapter_dim": 32, "decoder_channels": (8, 16, 32, 64)}
"""Shrinks the planner's vit_tiny network so that a training step takes tens of milliseconds."""


@pytest.fixture(scope="session")
def tiny_network() -> dict:
    """``TINY_NETWORK`` for test modules (which cannot import this conftest)."""
    return dict(TINY_NETWORK)


@pytest.fixture(scope="session")
def _dataset_template(tmp_path_factory, point_folders) -> Path:
    """Raw and preprocessed tiny phantom dataset, planned and preprocessed once per session with
    the real pipeline (vit_tiny); the network then shrunk to ``TINY_NETWORK``."""
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp("dataset_template")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(num_training=6, num_test=0, shape=(16, 48, 48))
        generate_synthetic_dataset(root / "raw", spec)
        plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
    plans.network = plans.network.replace(**TINY_NETWORK)
    plans.save(root / "preprocessed" / DATASET / f"{plans.plans_name}.json")
    return root


def install_tiny_dataset(template: Path, root: Path) -> str:
    """Copy the template's raw and preprocessed dataset under ``root`` (raw/, preprocessed/)."""
    for name in ("raw", "preprocessed"):
        shutil.copytree(template / name / DATASET, root / name / DATASET)
    return DATASET


@pytest.fixture
def tiny_dataset(nnsam3d_folders, _dataset_template) -> str:
    """The tiny vit_tiny dataset copied into this test's own nnsam3d folders; returns its name."""
    return install_tiny_dataset(_dataset_template, nnsam3d_folders.raw.parent)


@pytest.fixture(scope="module")
def module_dataset(tmp_path_factory, _dataset_template, point_folders):
    """Like ``tiny_dataset`` but shared by a test module: (dataset name, root folder).

    The nnsam3d folder variables point into the root for as long as the module runs.
    """
    root = tmp_path_factory.mktemp("module_folders")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        yield install_tiny_dataset(_dataset_template, root), root


def assert_reported_dice_matches_files(summary: dict, prediction_dir: Path, reference_dir: Path,
                                       labels: dict[str, int]) -> None:
    """The Dice an evaluation summary reports is the Dice of the files on disk: recomputed here
    with numpy, case by case and class by class (None where both masks are empty)."""
    import nibabel as nib
    import numpy as np

    assert summary["per_case"], "the summary lists no case"
    for case in summary["per_case"]:
        prediction = np.asarray(nib.load(prediction_dir / Path(case["prediction_file"]).name).dataobj)
        reference = np.asarray(nib.load(reference_dir / Path(case["reference_file"]).name).dataobj)
        for name, value in labels.items():
            overlap = 2 * np.count_nonzero((prediction == value) & (reference == value))
            total = np.count_nonzero(prediction == value) + np.count_nonzero(reference == value)
            reported = case["metrics"][name]["Dice"]
            if total == 0:
                assert reported is None, (case["case_id"], name)
            else:
                assert reported == pytest.approx(overlap / total), (case["case_id"], name)


@pytest.fixture(scope="session")
def reported_dice_check():
    """:func:`assert_reported_dice_matches_files`, for test modules (which cannot import this
    conftest under --import-mode=importlib)."""
    return assert_reported_dice_matches_files


TINY_PREDICTION_NETWORK = {"patch_size": (8, 32, 32), "token_size": (2, 8, 8), "window_size": (4, 4, 4),
                           "adapter_dim": 16, "decoder_channels": (8, 16, 32, 64)}
"""A vit_tiny network small enough that a window takes milliseconds on the CPU (the prediction
and interactive tests' hand-made plans)."""


def hand_made_plans(
    target_spacing=(3.0, 1.0, 1.0), num_channels: int = 1, num_classes: int = 4, dataset_name: str = "Dataset990_SyntheticCT"
) -> Plans:
    """Plans with a chosen target spacing, fixed CT normalisation and the tiny network."""
    normalization = [
        ChannelNormalization(channel=c, modality="CT", scheme="CTNormalization", mean=80.0, std=100.0,
                             lower_bound=-200.0, upper_bound=400.0)
        for c in range(num_channels)
    ]
    return Plans(
        dataset_name=dataset_name,
        target_spacing=target_spacing,
        normalization=normalization,
        median_shape=(16, 48, 48),
        network=NetworkConfig(backbone="vit_tiny", in_channels=num_channels, num_classes=num_classes,
                              trainable="full", **TINY_PREDICTION_NETWORK),
        batch_size=2,
        memory=MemoryBudget(target_bytes=2**30, estimate_bytes=2**28, precision="fp32"),
    )


@pytest.fixture(scope="session")
def make_plans():
    """:func:`hand_made_plans` (test modules cannot import conftest under --import-mode=importlib)."""
    return hand_made_plans


def mark_unannotated_slices(dataset_dir: Path, ignore: int) -> None:
    """Sparse annotation: every second slice (last file axis) of every label map of ``dataset_dir``
    becomes unannotated (the value ``ignore``), and dataset.json gets the label "ignore"."""
    import json

    import nibabel as nib
    import numpy as np

    for path in sorted((dataset_dir / "labelsTr").glob("*.nii.gz")):
        image = nib.load(path)
        labels = np.asarray(image.dataobj).copy()
        labels[..., ::2] = ignore
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)
    description = json.loads((dataset_dir / "dataset.json").read_text())
    description["labels"]["ignore"] = ignore
    (dataset_dir / "dataset.json").write_text(json.dumps(description))


@pytest.fixture(scope="session")
def mark_unannotated():
    """:func:`mark_unannotated_slices`."""
    return mark_unannotated_slices
