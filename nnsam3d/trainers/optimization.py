"""Optimiser, learning-rate schedule and mixed precision for one training run.

* AdamW over the trainable parameters only (frozen SAM weights get no optimiser state, which
  saves two fp32 copies of the encoder). Biases and norms (1-D tensors) and the position
  embeddings (matched by name: they are 4-D and 5-D here) get no weight decay, as is usual for ViTs.
* Linear warm-up, then poly decay (nnU-Net's ``(1 - t)^0.9``) or cosine decay to zero, stepped
  per iteration so that short schedules warm up properly.
* Precision: bf16 autocast on GPUs that support it (no scaler needed: bf16 has fp32's range),
  fp16 autocast with a ``GradScaler`` on older GPUs, fp32 on the CPU (CPU autocast is slower
  than fp32 for these convolutions).
* Gradient clipping at norm 12, nnU-Net's value. AdamW's step is nearly invariant to gradient
  scale, so the clip is a guard against single outlier batches (they would inflate Adam's
  second-moment estimate for many steps), not a regulariser; 12 leaves normal steps untouched.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from nnsam3d.devices import autocast_dtype_for

DEFAULT_GRADIENT_CLIP_NORM = 12.0
SCHEDULE_KINDS = ("poly", "cosine")


def trainable_parameter_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: with decay for matrices/kernels, without for 1-D tensors.

    Only parameters with ``requires_grad`` are included.
    """
    decay, no_decay = [], []
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith("pos_embed") else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the network has no trainable parameters; check NetworkConfig.trainable")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(network: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    groups = trainable_parameter_groups(network, weight_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             fused=fused_adamw_for([p for group in groups for p in group["params"]]))


def fused_adamw_for(parameters) -> bool | None:
    """True (one fused kernel for the whole update) when every trained tensor is on a CUDA GPU;
    None elsewhere: PyTorch's default. On a GPU the default is the multi-tensor path, several
    kernels per step over the trained tensors (and the frozen encoder has none: it is not in the
    groups). The CPU keeps the per-tensor loop it has always trained with: on a quiet 2-core host
    the fused kernel saves 14 ms of a 0.5 s vit_tiny step (16.6 against 2.4 ms for 2.4 M
    parameters), too little to change the basis of every CPU figure of the project."""
    return True if parameters and all(p.device.type == "cuda" for p in parameters) else None


class WarmupDecaySchedule:
    """Per-iteration learning rate: linear warm-up from ~0 to ``peak``, then decay to 0.

    total_steps: iterations of the whole schedule; warmup_fraction: share of them spent warming
    up. ``total_steps`` may change during a run (a finished run extended with more epochs, a
    time budget that fits fewer); warm-up and decay then follow the new length from the current
    step on.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak: float, total_steps: int, warmup_fraction: float,
                 kind: str = "poly", exponent: float = 0.9):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got '{kind}'")
        self.optimizer = optimizer
        self.peak = peak
        self.warmup_fraction = warmup_fraction
        self.kind = kind
        self.exponent = exponent
        self.step_count = 0
        self.total_steps = max(1, int(total_steps))
        self._apply()

    @property
    def warmup_steps(self) -> int:
        return min(round(self.warmup_fraction * self.total_steps), self.total_steps - 1)

    def resize(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))
        self._apply()

    def learning_rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            return self.peak * 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak * (1 - progress) ** self.exponent

    @property
    def current(self) -> float:
        return self.learning_rate(self.step_count)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


@dataclass
class Precision:
    """How forward passes run: ``dtype`` for autocast (None = fp32) and the fp16 gradient scaler."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def precision_for(device: torch.device) -> Precision:
    """The predictor's autocast rule (bf16 on GPUs that support it, else fp16; fp32 on the CPU),
    with a gradient scaler for fp16, whose range is too small for raw gradients."""
    dtype = autocast_dtype_for(device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return Precision(device.type, dtype, scaler)


class Optimization:
    """Optimiser + schedule + precision: one call per iteration does backward and update."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: WarmupDecaySchedule, precision: Precision,
                 clip_norm: float | None = DEFAULT_GRADIENT_CLIP_NORM):
        self.optimizer = optimizer
        self.schedule = schedule
        self.precision = precision
        self.clip_norm = clip_norm
        self._parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def step(self, loss: torch.Tensor) -> None:
        """Backward pass, (unscale,) clip, optimiser step, schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._parameters, self.clip_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}
        if self.precision.scaler is not None:
            state["grad_scaler"] = self.precision.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._lay_out_moments_like_parameters()
        self.schedule.load_state_dict(state["schedule"])
        if self.precision.scaler is not None and "grad_scaler" in state:
            self.precision.scaler.load_state_dict(state["grad_scaler"])

    def _lay_out_moments_like_parameters(self) -> None:
        """AdamW's moments in the memory layout of their parameter. A run resumed with another layout
        than it was saved with (``--channels-last`` added or dropped) would otherwise pair channels-last
        parameters and gradients with contiguous moments, which multi-tensor and fused AdamW cannot
        take in one kernel."""
        for parameter, moments in self.optimizer.state.items():
            for key, value in moments.items():
                if (isinstance(value, torch.Tensor) and value.shape == parameter.shape
                        and value.stride() != parameter.stride()):
                    moments[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
