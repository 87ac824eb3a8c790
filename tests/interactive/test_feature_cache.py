"""The feature cache holds at most its bound in bytes, least recently used out, keyed by encoder object."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnsam3d.interactive.feature_cache import FeatureCache, encoder_of, features_bytes


def _features(kib: int) -> list[torch.Tensor]:
    return [torch.zeros(kib * 128, dtype=torch.float32), torch.zeros(kib * 128, dtype=torch.float32)]  # kib KiB


def test_the_bound_is_in_bytes_and_the_least_recently_used_entry_leaves_first():
    cache = FeatureCache(max_bytes=3 * 1024)
    encoder = nn.Identity()
    a, b, c = (FeatureCache.key(encoder, tile, ()) for tile in range(3))
    assert features_bytes(_features(1)) == 1024
    assert cache.put(a, _features(1)) and cache.put(b, _features(1)) and cache.put(c, _features(1))
    assert cache.bytes == 3 * 1024 and len(cache) == 3
    assert cache.get(a) is not None                            # a is now the most recent
    assert cache.put(FeatureCache.key(encoder, 9, ()), _features(2))
    assert cache.get(b) is None and cache.get(c) is None and cache.get(a) is not None
    assert cache.bytes == 3 * 1024
    assert cache.put(a, _features(2))                          # a grows to 2 KiB: the other entry must go
    assert cache.bytes == 2 * 1024 and len(cache) == 1


def test_an_entry_larger_than_the_bound_is_not_kept_and_replaces_nothing():
    cache = FeatureCache(max_bytes=2 * 1024)
    key = FeatureCache.key(nn.Identity(), 0, (2,))
    cache.put(key, _features(1))
    assert not cache.put(FeatureCache.key(nn.Identity(), 1, ()), _features(3))
    assert cache.get(key) is not None and cache.bytes == 1024
    with pytest.raises(ValueError, match="bound"):
        FeatureCache(-1)


def test_entries_are_keyed_by_the_encoder_object_the_tile_and_the_mirroring():
    class Net(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

    shared = nn.Linear(2, 2)
    one, two, other = Net(shared), Net(shared), Net(nn.Linear(2, 2))
    assert FeatureCache.key(encoder_of(one), 0, ()) == FeatureCache.key(encoder_of(two), 0, ())
    assert FeatureCache.key(encoder_of(one), 0, ()) != FeatureCache.key(encoder_of(other), 0, ())
    assert FeatureCache.key(encoder_of(one), 0, ()) != FeatureCache.key(encoder_of(one), 0, (2,))
    assert encoder_of(shared) is shared                        # no encoder attribute: itself
