"""``benchmarks/gpu_checks.py --dry-run``: the GPU check's own code, run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_checks.py"


def test_dry_run_trains_the_plans_that_fit_stops_before_the_others_and_predicts(tmp_path):
    output = tmp_path / "gpu_checks.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(output.read_text())
    assert result["dry_run"] and result["environment"]["torch"]
    [run] = result["plans"]  # the 0.2 GiB plan; the 0.3 GiB one does not fit the 0.19 GiB 'card'
    assert run["backbone"] == "vit_tiny" and run["budget_gb"] == 0.2
    assert "0.3 GiB plan" in result["stopped"] and "not run" in result["stopped"]
    # A real step was measured: live storage above the parameters, the fused CPU attention kernel.
    assert run["live_storage_peak"] > run["estimate_bytes"]["parameters"] + run["estimate_bytes"]["optimizer_state"]
    assert run["sdpa_kernel"] == "_scaled_dot_product_flash_attention_for_cpu"
    assert run["seconds_per_step"] > 0 and run["flops_per_step"] > 0
    assert run["estimate_over_measured"] == pytest.approx(run["estimate_bytes"]["total"] / run["live_storage_peak"],
                                                          rel=1e-2)
    assert result["prediction"]["seconds"] > 0 and result["prediction"]["image_shape_ijk"] == [48, 48, 16]


def test_without_a_gpu_the_real_check_refuses_cleanly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real check would run")
    completed = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path / "x.json")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "needs a CUDA GPU" in completed.stderr
    assert not (tmp_path / "x.json").exists()
