"""Where networks run and at which precision, and host copies that complete before they are
read: one rule for training and inference."""

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


class HostCopy:
    """A tensor's copy in host memory that may still be in flight.

    From a GPU the copy goes into pinned memory without waiting (``non_blocking``), which keeps it
    off the caller's critical path; until the GPU has done it the host buffer holds garbage. So the
    copy is read only through :meth:`get`, which first waits for the CUDA event recorded after the
    copy (a copy back to the same GPU would be ordered by the stream, but a read on the CPU is not).
    """

    def __init__(self, tensor: torch.Tensor, done=None):
        self._tensor = tensor
        self._done = done  # a torch.cuda.Event (or any object with synchronize()); None: complete

    def wait(self) -> None:
        if self._done is not None:
            self._done.synchronize()
            self._done = None

    def get(self) -> torch.Tensor:
        """The copy, complete."""
        self.wait()
        return self._tensor


def copy_to_host(tensor: torch.Tensor) -> HostCopy:
    """A host copy of ``tensor``: from a GPU into pinned memory without waiting (see :class:`HostCopy`);
    a tensor already on the CPU is taken as it is, not copied (the caller must not change it later)."""
    if tensor.device.type != "cuda":
        return HostCopy(tensor)
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(tensor.device))
    return HostCopy(host, done)
