"""``benchmarks/gpu_checks.py``: the GPU check's own code, run on the CPU (``--dry-run``). It must
report the plans it measured (and stop before one that does not fit), and compute its ratios from
what it measured."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.memory_model import estimate_training_memory

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_checks.py"


@pytest.fixture
def gpu_checks(monkeypatch):
    """The script as a module (its folder on ``sys.path``, as when it runs)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_checks")


def test_dry_run_reports_the_plan_it_trained_and_stops_before_the_one_that_does_not_fit(tmp_path, gpu_checks):
    output = tmp_path / "gpu_checks.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(output.read_text())
    assert result["dry_run"] and result["environment"]["torch"]
    fitting, too_large = (gpu_checks._dry_run_plans(gb)[0] for gb in gpu_checks.DRY_RUN_BUDGETS_GB)
    [run] = result["plans"]
    # The planner's 0.2 GiB plan, trained as gpu_checks trains vit_tiny (everything trainable).
    assert (run["budget_gb"], run["backbone"], run["patch_size"], run["batch_size"]) == (
        0.2, "vit_tiny", list(fitting.patch_size), fitting.batch_size)
    config = fitting.network.replace(trainable="full")
    assert run["estimate_bytes"] == estimate_training_memory(config, fitting.batch_size, "fp32").breakdown()
    assert run["estimate_over_measured"] == round(run["estimate_bytes"]["total"] / run["live_storage_peak"], 3)
    # The 0.3 GiB plan needs more than the dry run's card, and the reason names both.
    card_gib = int(gpu_checks.DRY_RUN_CARD_GB * 2**30) / 2**30
    assert too_large.memory.estimate_bytes > gpu_checks.DRY_RUN_CARD_GB * 2**30
    assert result["stopped"] == (f"the 0.3 GiB plan (vit_tiny {list(too_large.patch_size)} x {too_large.batch_size}) "
                                 f"needs about {too_large.memory.estimate_bytes / 2**30:.1f} GiB, more than this "
                                 f"card's {card_gib:.1f} GiB: not run")
    assert run["sdpa_kernel"] == "_scaled_dot_product_flash_attention_for_cpu"
    # The prediction used the fitting plan's patch on the dry run's CT.
    assert result["prediction"]["patch_size"] == list(fitting.patch_size)
    assert result["prediction"]["image_shape_ijk"] == [48, 48, 16]
    # Timed with the argmax where the scores are and with the host's, which agree.
    assert result["prediction"]["labels_equal_host_argmax"] is True
    assert result["prediction"]["seconds_with_host_argmax"] > 0
    # The networks' share of the case's time (the rest: preprocessing, accumulation, export).
    assert 0 < result["prediction"]["network_seconds"] <= result["prediction"]["seconds"]
    assert 0 < result["prediction"]["network_seconds_resampled"] <= result["prediction"]["seconds_resampled"]


def test_the_ratio_and_the_throughput_come_from_the_measured_peak_and_time(gpu_checks, monkeypatch):
    """A tracker that reports three times the estimate and a clock that advances 0.25 s a step:
    the check must report estimate/measured = 1/3 (not 3), 0.25 s per step (not the total)
    and the throughput of the FLOPs in 0.25 s."""
    plans, _ = gpu_checks._dry_run_plans(0.2)
    config = plans.network.replace(trainable="full")
    estimate = estimate_training_memory(config, plans.batch_size, "fp32")
    steps = 2

    class ThreeTimesTheEstimate(gpu_checks.LiveStorageTracker):
        def __exit__(self, *exception):
            result = super().__exit__(*exception)
            self.peak = 3 * estimate.total
            return result

    readings = iter([100.0, 100.0 + 0.25 * steps])
    monkeypatch.setattr(gpu_checks, "LiveStorageTracker", ThreeTimesTheEstimate)
    monkeypatch.setattr(gpu_checks, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    run = gpu_checks.training_check(plans, gpu_checks.torch.device("cpu"), steps)

    assert run["patch_size"] == list(plans.patch_size) and run["batch_size"] == plans.batch_size
    assert run["live_storage_peak"] == 3 * estimate.total
    assert run["estimate_over_measured"] == 0.333
    assert run["seconds_per_step"] == 0.25
    flops = estimate_training_flops(config, plans.batch_size).total
    assert run["flops_per_step"] == flops
    assert run["achieved_tflops"] == round(flops / 0.25 / 1e12, 3)


def test_without_a_gpu_the_real_check_refuses_cleanly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real check would run")
    completed = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path / "x.json")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "needs a CUDA GPU" in completed.stderr
    assert not (tmp_path / "x.json").exists()
