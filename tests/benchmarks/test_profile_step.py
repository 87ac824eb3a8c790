"""``benchmarks/profile_step.py``: the step profile's own code on the CPU (``--dry-run``), and the
rule that puts each profiled operation in a part, on real profiler events."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "profile_step.py"


@pytest.fixture
def profile_step(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("profile_step")


def test_depthwise_convolutions_and_the_optimiser_get_their_own_parts(profile_step):
    """Real events: a depthwise 3D convolution (an adapter's) forward and backward is all
    'adapter convolutions', a full one all 'convolutions', AdamW's step all 'optimizer'."""
    depthwise = nn.Conv3d(8, 8, 3, padding=1, groups=8)
    full = nn.Conv3d(8, 8, 3, padding=1)
    optimizer = torch.optim.AdamW(depthwise.parameters(), lr=1e-3)
    x = torch.randn(1, 8, 6, 12, 12, requires_grad=True)

    def seconds(run) -> dict:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            run()
        return profile_step.time_by_part(profiler.events(), on_gpu=False)[0]

    adapter = seconds(lambda: depthwise(x).square().sum().backward())
    assert adapter["adapter convolutions"] > 0 and adapter["convolutions"] == 0
    decoder = seconds(lambda: full(x).square().sum().backward())
    assert decoder["convolutions"] > 0 and decoder["adapter convolutions"] == 0
    optimiser = seconds(optimizer.step)
    assert optimiser["optimizer"] > 0
    assert sum(optimiser.values()) == pytest.approx(optimiser["optimizer"])


def test_dry_run_profiles_the_planned_step_and_separates_model_from_hardware_flops(tmp_path, profile_step):
    output = tmp_path / "profile.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(output)],
                               capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(output.read_text())
    plans, _ = importlib.import_module("gpu_checks")._dry_run_plans(0.2)
    assert (result["backbone"], result["patch_size"], result["batch_size"]) == (
        "vit_tiny", list(plans.patch_size), plans.batch_size)
    assert set(result["share_by_part"]) == set(profile_step.PARTS)
    assert sum(result["share_by_part"].values()) == pytest.approx(1.0, abs=0.01)
    # vit_tiny trains whole: matrix products, convolutions and AdamW all take time.
    for part in ("linear layers", "convolutions", "optimizer"):
        assert result["share_by_part"][part] > 0.01, part
    # The dry-run plan recomputes its encoder blocks: hardware FLOPs exceed model FLOPs by the
    # recompute, and PyTorch's counter over a real step (which sees the recompute) agrees with
    # the hardware figure.
    assert result["activation_checkpointing"]
    assert result["hardware_tflop_per_step"] > result["model_tflop_per_step"]
    assert result["counted_tflop_per_step"] == pytest.approx(result["hardware_tflop_per_step"], rel=0.03)
    assert 0 <= result["data_wait_share"] < 1
