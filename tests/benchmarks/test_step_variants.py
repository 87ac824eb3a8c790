"""``benchmarks/step_variants.py`` on the CPU (``--dry-run``): every variant trains the same network
on the same batch, so a variant that only changes the layout starts from the same loss, and one
that changes the network (no full-resolution norms) is told apart by the memory model too; checkpointing
every encoder block instead of the plan's first ones computes the same step with more recompute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_dry_run_measures_each_variant_of_the_same_step(tmp_path):
    output = tmp_path / "variants.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "step_variants.py"), "--dry-run", "--steps", "1", "--output", str(output),
         "--variants", "eager", "channels-last decoder", "no norm at full resolution", "compiled, CUDA graphs",
         "every encoder block checkpointed"],
        capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert completed.returncode == 0, completed.stderr
    assert "compiled, CUDA graphs: GPU only, skipped" in completed.stderr
    result = json.loads(output.read_text())
    variants = result["variants"]
    assert list(variants) == ["eager", "channels-last decoder", "no norm at full resolution",
                              "every encoder block checkpointed"]
    for name, measured in variants.items():
        assert measured["seconds_per_step"] > 0 and measured["model_tflop_per_s"] > 0, name
    assert variants["eager"]["speedup_over_eager"] == 1.0
    assert variants["channels-last decoder"]["first_loss"] == pytest.approx(variants["eager"]["first_loss"], rel=1e-5)
    assert variants["no norm at full resolution"]["first_loss"] != pytest.approx(variants["eager"]["first_loss"], rel=1e-3)
    light, eager = variants["no norm at full resolution"], variants["eager"]
    assert light["estimated_peak_gib"] < eager["estimated_peak_gib"]
    # The dry-run plan checkpoints only its first blocks; the variant recomputes all, same step.
    every = variants["every encoder block checkpointed"]
    assert eager["checkpointed_blocks"] == result["checkpointed_blocks"] < every["checkpointed_blocks"] == 4
    assert every["first_loss"] == pytest.approx(eager["first_loss"], rel=1e-6)
    assert every["estimated_peak_gib"] <= eager["estimated_peak_gib"]
    assert every["recomputed_gflop_per_step"] > eager["recomputed_gflop_per_step"] > 0
    assert result["environment"]["gpu"] is None and result["plan"] == "vit_tiny, dry run"
