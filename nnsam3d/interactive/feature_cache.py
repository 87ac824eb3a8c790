"""The interactive session's encoder features, kept between clicks within a bound in bytes.

A tile's encoder features do not depend on the prompt, so a second click in the same region runs
decoders only. One entry is the features of one tile through one encoder in one mirroring,
keyed by the encoder *object*: folds that share one frozen encoder (the same module) share its
entries, so the encoder runs once for all of them.

Why bytes and not tiles: an entry's size depends on the backbone, the patch and the number of
feature blocks, and a tile has one entry per (encoder, mirroring). For the planner's 8 GiB vit_b
plan (patch 84 x 256 x 256) an entry is 63 MiB and a tile through 5 folds with mirroring 2.6 GB;
a bound of 32 tiles would allow 85 GB.
The bound is what the session reserves on the device when it decides where its whole-volume
state lives, so the cache and that state cannot together outgrow the device.

Entries larger than the whole bound are not kept (the click still runs; the next click in that
region encodes again). Least recently used entries leave first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Sequence

import torch
from torch import nn

FEATURE_CACHE_GPU_SHARE = 0.25
"""Default bound on a GPU: this share of its free memory when the session opens."""
DEFAULT_HOST_CACHE_BYTES = 2 * 2**30
"""Default bound when the networks run on the CPU (host RAM is usually larger and slower to fill)."""


def default_cache_bytes(device: torch.device) -> int:
    """The cache's bound when none is given: a share of the GPU's free memory, or 2 GiB on a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(FEATURE_CACHE_GPU_SHARE * free)
    return DEFAULT_HOST_CACHE_BYTES


def encoder_of(network: nn.Module) -> nn.Module:
    """The module whose output ``network.encode`` returns: the key under which features are shared.
    A network without an ``encoder`` attribute is its own encoder."""
    return getattr(network, "encoder", network)


def features_bytes(features: Sequence[torch.Tensor]) -> int:
    """Bytes held by one entry (the encoder's feature tensors)."""
    return sum(t.numel() * t.element_size() for t in features)


class FeatureCache:
    """LRU map (encoder, tile, mirroring) → feature tensors, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"the feature cache's bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._entries: OrderedDict[tuple, tuple[list[torch.Tensor], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(encoder: nn.Module, tile: int, mirroring: tuple[int, ...]) -> tuple[Hashable, ...]:
        # id(): modules hash by identity anyway; the id keeps the key small and the session holds
        # the predictor, so no encoder id is reused while its entries exist.
        return id(encoder), int(tile), tuple(mirroring)

    def get(self, key: tuple) -> list[torch.Tensor] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple, features: list[torch.Tensor]) -> bool:
        """Keep ``features`` under ``key``, evicting the least recently used entries to stay within
        the bound; returns False (and keeps nothing) when the entry alone exceeds the bound."""
        size = features_bytes(features)
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return False
        while self.bytes + size > self.max_bytes:
            _key, (_features, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        self._entries[key] = (features, size)
        self.bytes += size
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
