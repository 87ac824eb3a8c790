"""``benchmarks/export_speed.py --dry-run``: both plans' exports are timed against scipy's, the
coarse axis is found where the plan is anisotropic, and the labels agree with the reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_dry_run_times_the_export_against_scipys(tmp_path):
    output = tmp_path / "export.json"
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "export_speed.py"), "--dry-run", "--classes", "4",
                                "--output", str(output)], capture_output=True, text=True, timeout=300, cwd=BENCHMARKS)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(output.read_text())
    assert result["classes"] == 4 and set(result["plans"]) == {"anisotropic", "isotropic"}
    anisotropic, isotropic = result["plans"]["anisotropic"], result["plans"]["isotropic"]
    assert anisotropic["separate_axis"] == 0 and isotropic["separate_axis"] is None
    for plan in (anisotropic, isotropic):
        assert plan["case_grid"] == result["case_shape"] and plan["network_grid"] != plan["case_grid"]
        assert plan["same_label_share"] > 0.999
        assert {"label_map_seconds", "reference_label_map_seconds", "probabilities_seconds"} <= set(plan)
