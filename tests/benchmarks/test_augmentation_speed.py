"""``benchmarks/augmentation_speed.py --dry-run --reference``: every stage of the training pipeline
is timed (reading and each transform), the stages add up to the batch, the read block is the
rotated and zoomed patch's, larger than the patch in-plane, and the reference pipeline runs
batchgenerators' own transforms where nnsam3d has faster ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_dry_run_times_every_stage_of_a_batch(tmp_path):
    output = tmp_path / "augmentation.json"
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "augmentation_speed.py"), "--dry-run",
                                "--reference", "--output", str(output)], capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(output.read_text())
    stages = result["seconds_per_batch_by_stage"]
    assert list(stages)[:2] == ["read patches", "CroppedSpatialTransform"]  # both in the loader
    assert {"SeparableLowResolutionTransform", "MirrorTransform", "ToTensors"} <= set(stages)
    assert sum(stages.values()) == pytest.approx(result["seconds_per_batch"], abs=0.01)
    # The before: the same pipeline with batchgenerators' own transforms in their places.
    reference = result["reference"]["seconds_per_batch_by_stage"]
    assert list(reference)[:3] == ["read patches", "FoldAxisIntoChannels", "SpatialTransform"]  # thin axis folded
    assert "SimulateLowResolutionTransform" in reference
    assert not {"CroppedSpatialTransform", "SeparableLowResolutionTransform"} & set(reference)
    assert result["speedup_over_reference"] == pytest.approx(
        result["reference"]["seconds_per_batch"] / result["seconds_per_batch"], abs=0.01)
    patch, read = result["patch_size"], result["settings"]["read_size"]
    assert read[0] == patch[0] and all(r > p for r, p in zip(read[1:], patch[1:]))
    assert "gpu_step" not in result and result["environment"]["torch_threads"] == 1


def test_the_brain_plan_is_augmented_in_full_3d():
    """``--dataset brain`` measures the other kind of augmentation: rotation about every axis."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchmark_support import typical_brain_mri_plans
    finally:
        sys.path.remove(str(BENCHMARKS))
    from nnsam3d.trainers.augmentation import read_size_for, settings_for

    plans, _ = typical_brain_mri_plans(gpu_memory_gb=24.0)
    settings = settings_for(plans.patch_size, plans.target_spacing, plans.anisotropic_axis)
    assert settings.thin_axis is None and settings.rotation_degrees == 30.0
    assert all(r > p for r, p in zip(read_size_for(settings), plans.patch_size))
