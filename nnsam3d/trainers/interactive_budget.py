"""The interactive trainer's memory and compute on the plan it is given.

The planner chooses patch, batch and checkpointing for the automatic network's step. An
interactive step costs more: the prompt branch's parameters and activations, the decodes of the
simulated user's rounds and the click-weighted loss (``model/clicked_step_costs.py``; +8% to +11%
of the peak measured on the CPU). :func:`interactive_budget` estimates the clicked step on the
plan's configuration, with the same memory model and the same safety margin the planner used,
and the hours per fold of the default schedule with the trainer's mix of click-free and clicked
steps.

When the clicked step does not fit, :func:`check_interactive_budget` stops before training with
what to do. It does not lower the batch size: the planner is the one place that trades memory
for patch and batch (the trainer never changes the plan, whose file the checkpoints, the
predictor and the automatic model trained on the same plan all read), and memory-bound plans
already run at the smallest batch the planner allows. Over the compute target it only warns, as
the planner keeps its smallest rung whatever its compute (a slow plan beats none).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from nnsam3d.model.compute_budget import epoch_seconds, fold_hours
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import SAFETY_MARGIN, estimate_training_memory
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers.request import TrainingInputError

GiB = 2**30


@dataclass(frozen=True)
class InteractiveBudget:
    """estimate_bytes: peak memory of a clicked step (``MemoryEstimate.total``, CUDA allowance
    included), breakdown its parts; usable_bytes: ``SAFETY_MARGIN`` of the plan's target.
    clicked_share: share of the schedule's steps with clicks; step_flops: their mean FLOPs per
    step; forward_flops: a pseudo-Dice batch's (click-free); fold_hours / automatic_fold_hours:
    the default schedule on the reference GPU with and without clicks, as the plan's own."""

    estimate_bytes: int
    breakdown: dict[str, int]
    usable_bytes: int
    target_bytes: int
    clicked_share: float
    step_flops: float
    forward_flops: float
    fold_hours: float
    automatic_fold_hours: float

    @property
    def fits(self) -> bool:
        return self.estimate_bytes <= self.usable_bytes

    def summary(self) -> str:
        return (f"interactive step: estimated peak {self.estimate_bytes / GiB:.2f} GiB of {self.usable_bytes / GiB:.2f} "
                f"GiB usable ({SAFETY_MARGIN:.0%} of the plan's {self.target_bytes / GiB:.1f} GiB); "
                f"{self.fold_hours:.3g} h per fold of the default schedule on the reference GPU "
                f"({self.automatic_fold_hours:.3g} h without clicks; {self.clicked_share:.0%} of the steps clicked)")


def interactive_budget(plans: Plans, config: NetworkConfig, interactive_share: float, clicks_from: float,
                       max_click_rounds: int) -> InteractiveBudget:
    """The clicked step of ``config`` (interactive: ``prompt_channels > 0``) at the plan's batch
    size and precision. Rounds are drawn uniformly from 1..``max_click_rounds``: FLOPs average
    over them; the memory peak does not depend on them (earlier rounds run without gradient)."""
    batch, precision = plans.batch_size, plans.memory.precision
    memory = estimate_training_memory(config, batch, precision, click_rounds=max_click_rounds)
    automatic = estimate_training_flops(config, batch)
    clicked = sum(estimate_training_flops(config, batch, click_rounds=r).total
                  for r in range(1, max_click_rounds + 1)) / max_click_rounds
    share = (1 - clicks_from) * interactive_share
    step_flops = (1 - share) * automatic.total + share * clicked
    return InteractiveBudget(
        estimate_bytes=memory.total, breakdown=memory.breakdown(),
        usable_bytes=int(SAFETY_MARGIN * plans.memory.target_bytes), target_bytes=plans.memory.target_bytes,
        clicked_share=share, step_flops=step_flops, forward_flops=automatic.forward,
        fold_hours=fold_hours(step_flops, automatic.forward),
        automatic_fold_hours=fold_hours(automatic.total, automatic.forward),
    )


def check_interactive_budget(budget: InteractiveBudget, plans_file: Path, dataset: str) -> None:
    """Raise :class:`TrainingInputError` saying by how much and what to do when the clicked step
    does not fit the plan's memory target."""
    if budget.fits:
        return
    over = budget.estimate_bytes - budget.usable_bytes
    # Planning for a target this much smaller makes the planner choose a patch whose clicked
    # step fits the real one (the clicked step grows about in proportion to the automatic one).
    smaller = max(math.floor(10 * budget.target_bytes * budget.usable_bytes / budget.estimate_bytes / GiB) / 10, 0.1)
    needed = math.ceil(10 * budget.estimate_bytes / SAFETY_MARGIN / GiB) / 10
    raise TrainingInputError(
        f"{plans_file}: the interactive trainer's clicked step (prompt branch, simulated-click decodes, "
        f"click-weighted loss) needs an estimated {budget.estimate_bytes / GiB:.2f} GiB, "
        f"{over / GiB:.2f} GiB ({over / budget.usable_bytes:.0%}) more than the {budget.usable_bytes / GiB:.2f} GiB "
        f"this plan may use ({SAFETY_MARGIN:.0%} of its {budget.target_bytes / GiB:.1f} GiB target). Plan a smaller "
        f"patch for interactive training: nnsam3d_plan_and_preprocess -d {dataset} --gpu-memory-gb "
        f"{smaller:.1f} -p nnSAM3DPlans_interactive, then train with -p nnSAM3DPlans_interactive; "
        f"or, on a GPU with at least {needed:.1f} GiB, plan with --gpu-memory-gb {needed:.1f}."
    )


def record_interactive_budget(plans: Plans, budget: InteractiveBudget) -> Plans:
    """``plans`` with its memory estimate and compute figures those of interactive training (the
    checkpoints keep these plans: they then say what this training needed)."""
    memory = dataclasses.replace(plans.memory, estimate_bytes=budget.estimate_bytes, breakdown=budget.breakdown)
    compute = plans.compute
    if compute is not None:
        compute = dataclasses.replace(
            compute, flops_per_step=budget.step_flops, forward_flops=budget.forward_flops,
            epoch_seconds=epoch_seconds(budget.step_flops, budget.forward_flops), fold_hours=budget.fold_hours)
    return dataclasses.replace(plans, memory=memory, compute=compute)
