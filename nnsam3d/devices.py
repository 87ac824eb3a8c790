"""Where networks run and at which precision: one rule for training and inference."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. ``"cuda"`` without a GPU raises."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device must be auto, cpu or cuda, got '{device}'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but PyTorch sees no CUDA GPU; use --device cpu (or auto).")
    return device


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPUs (bfloat16 where supported, else float16), full precision on CPUs;
    training and inference both follow this rule."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
