"""Measure the peak of live tensor storage over a whole training step, on any device.

This is the measurement the whole-step memory model (:mod:`nnsam3d.model.memory_model`) is
tested against on the CPU and on the meta device, where ``torch.cuda.max_memory_allocated``
does not exist: a ``TorchDispatchMode`` sees every tensor an operation returns; each new
storage is counted from then until it is freed (a ``weakref.finalize`` on the storage, whose
Python object lives exactly as long as the storage). Storages alive before tracking starts
(parameters, gradients, optimiser state, the batch) are not returned by an operation: pass them
as ``existing``, so that they count from the start, are not counted again when an in-place
operation returns them, and stop counting when they are freed (the previous step's gradients).

What it cannot see: memory a kernel uses internally without returning it (cuDNN/cuBLAS
workspaces) and the allocator's rounding and caching, which the memory model adds as stated
allowances for CUDA.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorageTracker(TorchDispatchMode):
    """``with LiveStorageTracker(existing) as tracker: step()`` then ``tracker.peak`` (bytes).

    existing: tensors alive when tracking starts (see the module).
    """

    def __init__(self, existing=()):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        for tensor in existing:
            self._track(tensor)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        nbytes = storage.nbytes()
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out
