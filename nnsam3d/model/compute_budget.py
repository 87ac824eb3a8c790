"""The compute the planner plans for: hours per fold of the default schedule on a reference GPU.

(The GPU a plan is for has its own throughput when its model is known, measured or scaled from
its peak: ``nnsam3d.model.gpu_throughput``; the reference below is the default and the unit of
the CPU target.)

A plan's cost is its FLOPs per training step (``nnsam3d.model.compute_model``, the same layout
code as the memory model), turned into time with an assumed sustained throughput:

* **Reference GPU**: one H100-class GPU (H100 SXM: 989 TFLOP/s dense bf16 peak).
* **Sustained throughput**: ``REFERENCE_SUSTAINED_FLOPS`` = 110 TFLOP/s, about 11% of that peak,
  as measured: ``benchmarks/gpu_checks.py`` on an H200 (the H100's compute; torch 2.11, cuDNN
  attention, bf16) ran the planner's vit_b plans for a typical CT at 72, 110 and 123 TFLOP/s
  (8, 24 and 80 GiB plans; the small checkpointed plan is the least efficient). The encoder's
  large matrix products run near half of peak, but a step also runs memory-bound work that the
  FLOP count hardly sees: the adapters' depthwise 3D convolutions, InstanceNorm and LeakyReLU over
  narrow full-resolution 3D tensors, LayerNorm, GELU and autocast's copies, the loss at three
  resolutions and AdamW. The 24 GiB plan's figure is the reference.
* **Default target**: ``DEFAULT_FOLD_HOURS`` = 24: the default schedule (250 epochs of 250
  iterations plus the pseudo-Dice batches, a fifth of the iterations, forward only) trains one
  fold in about a day, nnU-Net's own budget for a 3d_fullres fold. At 110 TFLOP/s that allows
  about 140 TFLOP per step: above vit_b's plans up to about 40 GiB (14 TFLOP at 8 GiB, 108 at
  24 GiB for a typical CT), so on today's cards it bounds vit_h and large memory (the 80 GiB
  plan measured 1.57 s per step, 29 h per fold, before this bound), where patches would
  otherwise take days. ``--compute-budget HOURS`` changes it.
* **CPU plans**: the same cost, a smaller default. ``DEFAULT_CPU_STEP_SECONDS`` = 10 s per step
  at ``CPU_SUSTAINED_FLOPS`` = 60 GFLOP/s, what 2 cores sustained on the planner's CPU plans
  (``benchmarks/results/pretraining_step_cost_cpu.json`` and the runs of
  ``pretraining_benefit.py``: 40-100 GFLOP/s for vit_tiny and lite_medsam steps), i.e. about
  0.6 TFLOP per step, expressed in the same unit (hours per fold on the reference GPU) so that the
  search has one cost. Memory alone would let a pre-trained TinyViT take minutes per CPU step
  (LiteMedSAM's whole-brain plan: 2.5 TFLOP, about a minute on 2 cores), where a step is worth
  little more than vit_tiny's; vit_tiny's own CPU plans stay under it (the demo 0.04, a whole
  brain at 1.5 mm 0.44 TFLOP). ``--compute-budget`` overrides it on a CPU too.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_GPU = "one H100-class GPU (H100 SXM, 989 TFLOP/s dense bf16 peak)"
REFERENCE_PEAK_FLOPS = 989e12
REFERENCE_SUSTAINED_FLOPS = 110e12
DEFAULT_FOLD_HOURS = 24.0
SCHEDULE_EPOCHS = 250
SCHEDULE_ITERATIONS = 250
CPU_SUSTAINED_FLOPS = 60e9
DEFAULT_CPU_STEP_SECONDS = 10.0
VALIDATION_SHARE = 0.2
"""Pseudo-Dice batches per epoch as a share of the training iterations (the trainer's default)."""


@dataclass(frozen=True)
class ComputeTarget:
    """fold_hours: the budget for one fold of the default schedule on the GPU planned for (the
    reference GPU when its model is unknown, and the unit of the CPU target).
    source: where it came from, in words."""

    fold_hours: float
    source: str


def compute_target(compute_budget_hours: float | None = None, on_gpu: bool = True) -> ComputeTarget:
    """``--compute-budget`` (hours per fold) when given, else ``DEFAULT_FOLD_HOURS`` on a GPU and
    the fold hours of a ``DEFAULT_CPU_STEP_SECONDS`` CPU step (``cpu_default_fold_hours``) on a CPU."""
    if compute_budget_hours is not None:
        if compute_budget_hours <= 0:
            raise ValueError(f"--compute-budget must be positive, got {compute_budget_hours}.")
        return ComputeTarget(float(compute_budget_hours), f"--compute-budget {compute_budget_hours:g}")
    if not on_gpu:
        return ComputeTarget(
            cpu_default_fold_hours(),
            f"CPU default: a training step of about {DEFAULT_CPU_STEP_SECONDS:g} s on 2 cores at "
            f"{CPU_SUSTAINED_FLOPS / 1e9:g} GFLOP/s; --compute-budget overrides it",
        )
    return ComputeTarget(
        DEFAULT_FOLD_HOURS, "default: the default schedule trains a fold in about a day on the GPU planned for"
    )


def cpu_default_fold_hours() -> float:
    """The CPU step bound in the search's unit. A step's forward is taken as a third of it (a
    full step's share; with a frozen encoder it is larger, which makes the bound slightly tighter)."""
    step_flops = DEFAULT_CPU_STEP_SECONDS * CPU_SUSTAINED_FLOPS
    return fold_hours(step_flops, step_flops / 3)


def cpu_step_seconds(step_flops: float) -> float:
    """Rough seconds per training step on 2 CPU cores (``CPU_SUSTAINED_FLOPS``)."""
    return step_flops / CPU_SUSTAINED_FLOPS


def epoch_seconds(step_flops: float, forward_flops: float, sustained_flops: float = REFERENCE_SUSTAINED_FLOPS) -> float:
    """Seconds per epoch of the default schedule: training steps plus forward-only pseudo-Dice batches."""
    work = SCHEDULE_ITERATIONS * step_flops + VALIDATION_SHARE * SCHEDULE_ITERATIONS * forward_flops
    return work / sustained_flops


def fold_hours(step_flops: float, forward_flops: float, sustained_flops: float = REFERENCE_SUSTAINED_FLOPS) -> float:
    return SCHEDULE_EPOCHS * epoch_seconds(step_flops, forward_flops, sustained_flops) / 3600
