"""Measure the bytes autograd saves for backward during a forward pass.

This is the measurement :mod:`nnsam3d.model.memory_model` is tested against: every tensor
autograd saves passes through a ``torch.autograd.graph.saved_tensors_hooks`` pack hook; the
bytes are counted once per storage, so views of one buffer (q, k and v of one qkv tensor, a
transposed weight) and tensors saved by several operations count once, and storages shorter
than the whole buffer count the whole buffer, which is what stays allocated.

Parameters saved for backward (a frozen linear layer saves its weight to pass the gradient to
its input) are not activations: they are allocated anyway and the memory model counts them
under ``parameters``. Saved tensors whose storage is a parameter's storage are therefore
reported separately, not as activations. Casts of parameters (autocast's bf16 weight copies)
are new storages and do count as activations.

Works on the meta device too (storages are told apart by identity, not by address), which
measures large configurations without computing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn


@dataclass
class SavedTensors:
    """activation_bytes: bytes of distinct non-parameter storages saved for backward.
    parameter_bytes: bytes of parameter storages saved (already counted as parameters).
    storages: number of distinct activation storages."""

    activation_bytes: int = 0
    parameter_bytes: int = 0
    storages: int = 0
    _seen: dict = field(default_factory=dict, repr=False)


def _storage_identity(tensor: Tensor) -> int:
    return tensor.untyped_storage()._cdata


def measure_saved_tensors(module: nn.Module, forward: Callable[[], object]) -> tuple[SavedTensors, object]:
    """Run ``forward()`` (which calls ``module``) under a pack hook; returns the measurement and
    whatever ``forward`` returned (keep it alive until you are done: the saved tensors live as
    long as the graph does)."""
    parameter_storages = {_storage_identity(p) for p in module.parameters()}
    measurement = SavedTensors()
    kept = []  # keeps every saved storage alive, so an identity is never reused meanwhile

    def pack(tensor: Tensor) -> Tensor:
        identity = _storage_identity(tensor)
        if identity not in measurement._seen:
            nbytes = tensor.untyped_storage().nbytes()
            measurement._seen[identity] = nbytes
            kept.append(tensor)
            if identity in parameter_storages:
                measurement.parameter_bytes += nbytes
            else:
                measurement.activation_bytes += nbytes
                measurement.storages += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return measurement, result
