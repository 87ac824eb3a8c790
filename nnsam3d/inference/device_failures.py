"""Telling a broken device from a bad case.

After an illegal memory access, a device-side assert, an ECC error or a lost GPU, CUDA's
context in that process stays broken ("sticky" errors): every later call fails the same way,
whatever the case. A worker that goes on takes case after case and fails each in milliseconds,
so the runner retires it instead and hands its case to another (``ray_prediction``). Running
out of GPU memory is not one of these: it depends on the case and leaves the device usable.
"""

from __future__ import annotations

import torch

STICKY_DEVICE_ERROR_MARKERS = (
    "CUDA error",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "cuDNN error",
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "uncorrectable ECC error",
    "HIP error",
)
"""Message fragments of PyTorch's errors from a broken device context (CUDA and ROCm)."""


class DeviceFailure(RuntimeError):
    """A worker's device is broken; the case it was given should run elsewhere."""


def is_device_failure(error: BaseException) -> bool:
    """Whether ``error`` means the device of this process is broken (see the module), rather than
    the case being unreadable, too large or otherwise at fault."""
    if isinstance(error, DeviceFailure):
        return True
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # PyTorch >= 2.8 raises it for CUDA errors
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in STICKY_DEVICE_ERROR_MARKERS)
