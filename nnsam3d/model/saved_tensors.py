"""Measure the bytes autograd saves for backward during a forward pass.

This is the measurement :mod:`nnsam3d.model.memory_model` is tested against: every tensor
autograd saves passes through a ``torch.autograd.graph.saved_tensors_hooks`` pack hook; the
bytes are counted once per storage, so views of one buffer (q, k and v of one qkv tensor, a
transposed weight) and tensors saved by several operations count once, and storages shorter
than the whole buffer count the whole buffer, which is what stays allocated.

Parameters saved for backward (a frozen linear layer saves its weight to pass the gradient to
its input) are not activations: they are allocated anyway and the memory model counts them
under ``parameters``. Saved tensors whose storage is a parameter's storage are therefore left
out. Casts of parameters (autocast's bf16 weight copies) are new storages and do count as
activations.

Works on the meta device too (storages are told apart by identity, not by address), which
measures large configurations without computing anything.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def _storage_identity(tensor: Tensor) -> int:
    return tensor.untyped_storage()._cdata


def measure_saved_tensors(module: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the distinct non-parameter storages that autograd saves while ``forward()``
    (which calls ``module``) runs. ``forward``'s result is dropped, and with it the graph."""
    parameter_storages = {_storage_identity(p) for p in module.parameters()}
    seen: set[int] = set()
    kept = []  # keeps every saved storage alive, so an identity is never reused meanwhile
    activation_bytes = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal activation_bytes
        identity = _storage_identity(tensor)
        if identity not in seen:
            seen.add(identity)
            kept.append(tensor)
            if identity not in parameter_storages:
                activation_bytes += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return activation_bytes
