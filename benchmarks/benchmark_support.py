"""Pieces the benchmark scripts share: what machine they ran on, a typical CT plan, and model
folders of random-weight folds.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.schemas.plans import Plans


RESULTS = Path(__file__).with_name("results")
TRAINER, PLANS = "nnSAM3DTrainer", "nnsam3d_plans"
"""The trainer and plans names of the benchmarks' model folders (``nnsam3d_predict``'s defaults)."""


def environment() -> dict:
    """Software and machine facts recorded with every result (add the GPU's name where one is used)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_result(file_name: str | Path, content: dict) -> Path:
    """``benchmarks/results/<file_name>`` (or the path given), readable JSON; also printed."""
    path = file_name if isinstance(file_name, Path) else RESULTS / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(json.dumps(content, indent=2))
    return path


def load_average() -> str:
    """``/proc/loadavg`` (1, 5, 15 minute load, ...): what else the machine was doing."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def write_random_folds(plans: Plans, description: DatasetDescription, model_dir: Path, num_folds: int) -> None:
    """fold_K/checkpoint_final.pth with random weights (seed K), laid out as the trainer does;
    speed and memory do not depend on the weights."""
    for fold in range(num_folds):
        torch.manual_seed(fold)
        network = build_network(plans.network.replace(deep_supervision=False))
        checkpoint = ModelCheckpoint(TRAINER, str(fold), 0, plans.to_json(), description.to_json(), network.state_dict())
        save_checkpoint(checkpoint, model_dir / f"fold_{fold}" / "checkpoint_final.pth")


def typical_abdominal_ct_plans(
    slices: int, gpu_memory_gb: float = 24.0, backbone: str = "vit_b"
) -> tuple[Plans, DatasetDescription]:
    """The planner's plan (``backbone``, vit_b by default) for 40 abdominal CTs of ``slices`` x
    512 x 512 voxels at 2.5 x 0.78 x 0.78 mm with 13 organs, for a GPU of ``gpu_memory_gb`` GiB."""
    from nnsam3d.schemas.fingerprint import IntensityStatistics

    statistics = IntensityStatistics(mean=80.0, std=60.0, median=85.0, percentile_00_5=-90.0,
                                     percentile_99_5=280.0, min=-1024.0, max=3000.0)
    return _typical_plans("Dataset900_TypicalAbdomenCT", "CT", statistics, (2.5, 0.78, 0.78), (slices, 512, 512),
                          (slices, 420, 460), [f"organ_{i}" for i in range(1, 14)], gpu_memory_gb, backbone)


def typical_brain_mri_plans(gpu_memory_gb: float = 24.0, backbone: str = "vit_b") -> tuple[Plans, DatasetDescription]:
    """The planner's plan for 40 brain MRIs (T1) of 176 x 224 x 256 voxels of 1 mm, cropped to the
    head (150 x 190 x 160), with 3 tissue classes: isotropic, so augmented in full 3D."""
    from nnsam3d.schemas.fingerprint import IntensityStatistics

    statistics = IntensityStatistics(mean=400.0, std=150.0, median=420.0, percentile_00_5=20.0,
                                     percentile_99_5=900.0, min=0.0, max=1500.0)
    return _typical_plans("Dataset901_TypicalBrainMRI", "T1", statistics, (1.0, 1.0, 1.0), (176, 224, 256),
                          (150, 190, 160), ["csf", "grey_matter", "white_matter"], gpu_memory_gb, backbone)


def _typical_plans(name, modality, statistics, spacing, shape, cropped_shape, classes, gpu_memory_gb, backbone):
    from nnsam3d.planners.experiment_planner import plan_experiment
    from nnsam3d.schemas.fingerprint import DatasetFingerprint

    cases = [f"case_{i:03d}" for i in range(40)]
    fingerprint = DatasetFingerprint(
        dataset_name=name, case_ids=cases, spacings=[spacing] * len(cases),
        shapes_before_cropping=[shape] * len(cases), shapes_after_cropping=[cropped_shape] * len(cases),
        modalities={"0": modality}, intensity_statistics={"0": statistics},
    )
    labels = {"background": 0, **{label: index for index, label in enumerate(classes, start=1)}}
    description = DatasetDescription(channel_names={"0": modality}, labels=labels, num_training=len(cases),
                                     file_ending=".nii.gz")
    plans = plan_experiment(fingerprint, description, gpu_memory_gb=gpu_memory_gb, backbone=backbone)
    return plans, description
