"""What a batch of windows becomes: class probabilities averaged over networks and mirrorings.

Every network of the ensemble (usually one per cross-validation fold) sees every window, as is
and mirrored along every combination of the spatial axes (test-time augmentation); the softmax
outputs are averaged. Averaging probabilities, not logits, keeps every term in [0, 1], which is
what lets the sliding window accumulate them in float16, and it gives each fold an equal vote.
"""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from typing import Sequence

import torch
from torch import nn

SPATIAL_AXES = (2, 3, 4)
"""z, y, x of a (B, C, z, y, x) batch."""


def mirror_combinations(axes: Sequence[int] = SPATIAL_AXES) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` to flip, the identity (``()``) first: 2**len(axes) entries."""
    axes = tuple(axes)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


class WindowEnsemble:
    """Callable: windows (B, C, z, y, x) → mean softmax (B, K, z, y, x) float32.

    networks: in eval mode, returning one logits tensor (deep supervision off).
    mirror_axes: axes of the batch to mirror (2, 3, 4 = z, y, x); empty for no mirroring.
    autocast_dtype: run the networks under autocast in this dtype (bfloat16/float16 on a GPU);
        None for full precision. The average stays float32.
    ``network_seconds`` adds up the time spent in the networks. On a GPU every call records a
    pair of CUDA events instead of waiting for the kernels; the pairs are read (one synchronize)
    by :meth:`settle_timings`, which ``network_seconds`` calls.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        mirror_axes: Sequence[int] = SPATIAL_AXES,
        autocast_dtype: torch.dtype | None = None,
    ):
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        self.networks = list(networks)
        self.mirrorings = mirror_combinations(mirror_axes)
        self.autocast_dtype = autocast_dtype
        self._settled_seconds = 0.0
        self._pending_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def passes_per_window(self) -> int:
        return len(self.networks) * len(self.mirrorings)

    @property
    def network_seconds(self) -> float:
        self.settle_timings()
        return self._settled_seconds

    def settle_timings(self) -> None:
        """Add the recorded CUDA event pairs to ``network_seconds``; waits for the last one."""
        if not self._pending_events:
            return
        self._pending_events[-1][1].synchronize()
        self._settled_seconds += sum(start.elapsed_time(end) for start, end in self._pending_events) / 1000.0
        self._pending_events.clear()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        on_gpu = windows.device.type == "cuda"
        if on_gpu:
            # Timed on the GPU's own clock: a host clock would need a synchronize per call to see
            # the kernels end, and that would stall the queue of the next windows.
            stream = torch.cuda.current_stream(windows.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
        else:
            started = time.perf_counter()
        context = (
            torch.autocast(windows.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        )
        total = None
        with context:
            for network in self.networks:
                for axes in self.mirrorings:
                    logits = network(torch.flip(windows, axes) if axes else windows)
                    if isinstance(logits, (tuple, list)):
                        raise TypeError(
                            "the network returned several outputs; switch deep supervision off "
                            "(network.deep_supervision = False) before predicting"
                        )
                    probabilities = torch.softmax(logits.float(), dim=1)
                    if axes:
                        probabilities = torch.flip(probabilities, axes)
                    total = probabilities if total is None else total.add_(probabilities)
        total.div_(self.passes_per_window)
        if on_gpu:
            end.record(stream)
            self._pending_events.append((start, end))
        else:
            self._settled_seconds += time.perf_counter() - started
        return total
