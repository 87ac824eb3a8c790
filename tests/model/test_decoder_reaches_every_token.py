"""Every encoder token reaches the logits: no decoder level drops tokens by cropping.

For each token slice along each axis of each encoder feature the decoder reads, the tokens of
that slice are permuted among themselves (rolled by one position within the slice). A
permutation keeps every per-channel statistic of the feature, so the necks' InstanceNorm sees
the same mean and variance and cannot carry the change; only a path from those token positions
to the logits can. The logits must change.
"""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network

CASES = {
    # token size (z, y, x), token grid (z, y, x); small in-plane grids keep the test fast
    "token depth 1, 1x16x16": ((1, 16, 16), (4, 2, 2)),
    "token depth 2, 2x8x8": ((2, 8, 8), (4, 2, 2)),
    "token depth 4, 4x16x16": ((4, 16, 16), (4, 2, 2)),
    "8x8x8": ((8, 8, 8), (4, 2, 2)),
    "the reported plan's tokens, 2x16x16, a deep grid": ((2, 16, 16), (8, 2, 2)),
    "odd grid, token depth 1": ((1, 16, 16), (5, 3, 2)),
}


def roll_slice(feature: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """``feature`` ``(B, Z, H, W, D)`` with the tokens of slice ``index`` along grid ``axis``
    rolled by one position along the flattened slice (a permutation within the slice)."""
    rolled = feature.clone()
    slice_ = rolled.select(axis + 1, index)  # (B, a, b, D)
    flat = slice_.reshape(slice_.shape[0], -1, slice_.shape[-1])
    slice_.copy_(flat.roll(1, dims=1).view_as(slice_))
    return rolled


LITE_MEDSAM_GRIDS = {
    # LiteMedSAM's TinyViT: features of strides 2 and 4 in-plane (grids differ), tokens 1 slice deep
    "lite_medsam, 3x4x6 grid": (3, 4, 6),
    "lite_medsam, odd 5x3x2 grid": (5, 3, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_token_slice_of_every_feature_changes_the_logits(name):
    token_size, grid = CASES[name]
    patch = tuple(t * g for t, g in zip(token_size, grid))
    assert_every_token_reaches_the_logits(NetworkConfig(
        backbone="vit_tiny", patch_size=patch, token_size=token_size, window_size=(2, 2, 2),
        num_classes=2, decoder_channels=(4, 4, 8, 8), deep_supervision=False,
    ))


@pytest.mark.parametrize("name", list(LITE_MEDSAM_GRIDS))
def test_every_token_of_lite_medsams_features_changes_the_logits(name):
    grid = LITE_MEDSAM_GRIDS[name]
    assert_every_token_reaches_the_logits(NetworkConfig(
        backbone="lite_medsam", patch_size=(grid[0], 4 * grid[1], 4 * grid[2]), token_size=(1, 4, 4),
        num_classes=2, decoder_channels=(4, 4, 8, 8), deep_supervision=False,
    ))


def assert_every_token_reaches_the_logits(config: NetworkConfig) -> None:
    grid, patch = config.token_grid, config.patch_size
    torch.manual_seed(0)
    network = build_network(config).eval()
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = network.encoder(x)
        baseline = network.decoder(x, features, grid, deep_supervision=False)
        unreached = []
        for level, feature in enumerate(features):
            feature_grid = tuple(feature.shape[1:4])
            slices = [(axis, index) for axis in range(3) for index in range(feature_grid[axis])]
            # One decoder call for all perturbations of this feature: one per batch entry
            # (every normalisation in the decoder is per sample).
            batch = len(slices)
            perturbed = [f.expand(batch, *f.shape[1:]) for f in features]
            perturbed[level] = torch.cat([roll_slice(feature, axis, index) for axis, index in slices])
            logits = network.decoder(x.expand(batch, *x.shape[1:]), perturbed, grid, deep_supervision=False)
            change = (logits - baseline).abs().flatten(1).amax(dim=1)
            unreached += [
                (level, "zyx"[axis], index)
                for (axis, index), delta in zip(slices, change)
                if delta <= 1e-6 * baseline.abs().max()
            ]
    assert not unreached, f"token slices (feature, axis, index) that never reach the logits: {unreached}"
