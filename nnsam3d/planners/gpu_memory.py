"""The memory the planner plans for: ``--gpu-memory-gb``, else the visible GPU, else CPU training.

Sizes given in "GB" are read as GiB (2**30 bytes), the unit GPU memory sizes are really in: an
"80 GB" card has 80 GiB, of which the driver keeps a little (torch reports about 79 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BYTES_PER_GB = 2**30

DETECT_GPU = "detect"
"""``memory_target(gpu=DETECT_GPU)``: ask torch for the visible CUDA device."""

DEFAULT_CPU_MEMORY_GB = 4.0
"""Budget for CPU training (no CUDA GPU visible and no ``--gpu-memory-gb``): small enough to
train beside everything else on a laptop; CPU plans are for demos and tests."""


@dataclass(frozen=True)
class MemoryTarget:
    """target_bytes: what one training process may use. source: where that number came from,
    in words. on_gpu: whether the plan is for GPU training (else CPU training). device_name: the
    GPU model as torch names it, when the target is a GPU the planner sees (its throughput turns
    FLOPs into hours: ``model.gpu_throughput``)."""

    target_bytes: int
    source: str
    on_gpu: bool
    device_name: str | None = None


def gb_to_bytes(gigabytes: float) -> int:
    return int(round(gigabytes * BYTES_PER_GB))


def visible_gpu_memory() -> tuple[int, str, str] | None:
    """(total bytes, description, model name) of the current CUDA device, or None when no GPU is visible."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    total = int(properties.total_memory)
    return total, f"visible GPU {index} ({properties.name}, {total / BYTES_PER_GB:.1f} GiB)", properties.name


def memory_target(
    gpu_memory_gb: float | None = None, gpu: tuple | None | str = DETECT_GPU
) -> MemoryTarget:
    """The memory target.

    ``gpu_memory_gb``: the user's ``--gpu-memory-gb`` (GiB); wins when given.
    ``gpu``: (total bytes, description[, model name]) of the GPU to plan for, None for no GPU, or
    ``DETECT_GPU`` (default) to ask torch about the visible CUDA device.
    Without either, CPU training with ``DEFAULT_CPU_MEMORY_GB``.
    """
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            raise ValueError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}.")
        # A given size may be for another machine's GPU: no model is assumed.
        return MemoryTarget(gb_to_bytes(gpu_memory_gb), f"--gpu-memory-gb {gpu_memory_gb:g}", on_gpu=True)
    if gpu == DETECT_GPU:
        gpu = visible_gpu_memory()
    if gpu is not None:
        total, description, *name = gpu
        return MemoryTarget(int(total), description, on_gpu=True, device_name=name[0] if name else None)
    return MemoryTarget(
        gb_to_bytes(DEFAULT_CPU_MEMORY_GB),
        "default for CPU training: no CUDA GPU visible and no --gpu-memory-gb",
        on_gpu=False,
    )
