"""Sustained training throughput per GPU model: what turns a plan's FLOPs into hours.

The planner asks ``throughput_for(name)`` for the GPU it plans for (the visible one; without a
name, ``--gpu-memory-gb`` alone or CPU training, the reference GPU of ``compute_budget``):

1. **Measured**: a figure from ``benchmarks/gpu_checks.py`` on that GPU model (``MEASURED``):
   the achieved TFLOP/s of the planner's 24 GiB vit_b plan for a typical CT, the reference plan.
   Only measurements enter this table, each with its file, torch version and date.
2. **Scaled**: a GPU model whose dense bf16 tensor peak is known (``DENSE_BF16_PEAK``, the
   vendors' data sheets, no sparsity) but that was never measured: that peak times the share of
   peak measured on the reference GPU (about 11%). Memory bandwidth differs between models and
   our step is partly memory-bound (``profile_step.py`` shows how much), so this is an estimate,
   and the source says so.
3. Otherwise the reference GPU's figure, again said to be assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnsam3d.model.compute_budget import REFERENCE_GPU, REFERENCE_PEAK_FLOPS, REFERENCE_SUSTAINED_FLOPS


@dataclass(frozen=True)
class Throughput:
    """flops_per_second: sustained FLOP/s of a training step; device: the GPU it applies to;
    source: measured or assumed, and from what."""

    flops_per_second: float
    device: str
    source: str


MEASURED = {
    "NVIDIA H200": Throughput(
        109.695e12, "NVIDIA H200",
        "measured on an NVIDIA H200 (benchmarks/results/gpu_checks.json: the 24 GiB vit_b plan of a typical CT; "
        "torch 2.11, CUDA 13.0, bf16; 2026-11-30)"),
}
"""GPU model (as torch names it, without memory size suffixes) → measured throughput."""

DENSE_BF16_PEAK = (  # first match wins: the more specific names first
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
)
"""Dense bf16 tensor-core peaks (FLOP/s) of data-centre GPUs, from NVIDIA's data sheets."""


def throughput_for(device_name: str | None) -> Throughput:
    """The sustained throughput to plan ``device_name`` with (see the module's docstring)."""
    reference = Throughput(REFERENCE_SUSTAINED_FLOPS, REFERENCE_GPU,
                           f"the reference figure, {MEASURED['NVIDIA H200'].source}")
    if not device_name:
        return reference
    for model, measured in MEASURED.items():
        if device_name == model or device_name.startswith(model + " "):
            return measured
    share = REFERENCE_SUSTAINED_FLOPS / REFERENCE_PEAK_FLOPS
    for model, peak in DENSE_BF16_PEAK:
        if model in device_name:
            return Throughput(
                share * peak, device_name,
                f"assumed, not measured on {device_name}: {share:.0%} of its {peak / 1e12:g} TFLOP/s dense bf16 peak, "
                f"the share measured on the reference GPU")
    return Throughput(REFERENCE_SUSTAINED_FLOPS, device_name,
                      f"assumed, not measured on {device_name} and its peak is not known: the reference GPU's figure")
