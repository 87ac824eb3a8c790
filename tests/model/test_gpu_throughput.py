"""The throughput the planner turns FLOPs into hours with: measured per GPU model where a
measurement exists (and then equal to it), scaled from the data-sheet peak where not, said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnsam3d.model.compute_budget import REFERENCE_PEAK_FLOPS, REFERENCE_SUSTAINED_FLOPS
from nnsam3d.model.gpu_throughput import MEASURED, throughput_for

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_the_measured_figure_is_the_committed_measurement():
    checks = json.loads((RESULTS / "gpu_checks.json").read_text())
    [reference_plan] = [run for run in checks["plans"] if run["budget_gb"] == 24]
    measured = MEASURED[checks["environment"]["gpu"]]
    assert measured.flops_per_second == pytest.approx(reference_plan["achieved_tflops"] * 1e12, rel=1e-4)
    assert checks["environment"]["torch"].startswith("2.11") and "torch 2.11" in measured.source
    assert REFERENCE_SUSTAINED_FLOPS == pytest.approx(measured.flops_per_second, rel=0.01)


@pytest.mark.parametrize("name, peak_tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121),
])
def test_unmeasured_models_scale_the_measured_share_of_peak(name, peak_tflops):
    throughput = throughput_for(name)
    share = REFERENCE_SUSTAINED_FLOPS / REFERENCE_PEAK_FLOPS
    assert throughput.flops_per_second == pytest.approx(share * peak_tflops * 1e12)
    assert throughput.device == name
    assert throughput.source.startswith(f"assumed, not measured on {name}") and f"{peak_tflops:g} TFLOP/s" in throughput.source


def test_measured_unknown_and_unnamed_gpus():
    assert throughput_for("NVIDIA H200") is MEASURED["NVIDIA H200"]
    assert throughput_for("NVIDIA H200").source.startswith("measured on an NVIDIA H200")
    unknown = throughput_for("Some Accelerator X")
    assert unknown.flops_per_second == REFERENCE_SUSTAINED_FLOPS and "peak is not known" in unknown.source
    unnamed = throughput_for(None)
    assert unnamed.flops_per_second == REFERENCE_SUSTAINED_FLOPS and unnamed.source.startswith("the reference figure, measured")
