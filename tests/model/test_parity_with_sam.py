"""The 3D encoder built from a SAM-format file computes what segment-anything computes.

Reference: segment-anything's own ``ImageEncoderViT`` holding the same weights, fed the slice as
an RGB image (the slice replicated to three channels). The 3D network gets a volume of identical
slices (one token deep) and must give SAM's tokens block by block, adapters present and
zero-initialised. Then a volume several tokens deep must give the same tokens on every slice.
"""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network

SAM_IMAGE = 1024  # segment-anything's builder fixes SAM's geometry; the grid is then 64 x 64


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def assert_block_by_block_parity(backbone: str, sam_checkpoint, depth_token: int) -> None:
    path, sam = sam_checkpoint(backbone)
    config = NetworkConfig(
        backbone=backbone,
        in_channels=2,
        num_classes=2,
        patch_size=(depth_token, SAM_IMAGE, SAM_IMAGE),
        token_size=(depth_token, 16, 16),
        window_size=(2, 14, 14),
        adapter_blocks=tuple(range(len(sam.image_encoder.blocks))),
    )
    network = build_network(config, sam_checkpoint=path).eval()
    slice_ = torch.randn(1, 1, SAM_IMAGE, SAM_IMAGE, generator=torch.Generator().manual_seed(1))
    volume = slice_[:, :, None].expand(1, config.in_channels, depth_token, SAM_IMAGE, SAM_IMAGE)
    reference = sam.image_encoder

    with torch.no_grad():
        expected = reference.patch_embed(slice_.expand(1, 3, SAM_IMAGE, SAM_IMAGE)) + reference.pos_embed
        actual = network.encoder.embed(volume)
        assert actual.shape == (1, 1, 64, 64, reference.pos_embed.shape[-1])
        errors = [relative_error(actual[:, 0], expected)]
        for ours, theirs in zip(network.encoder.blocks, reference.blocks):
            expected = theirs(expected)
            actual = ours(actual)
            errors.append(relative_error(actual[:, 0], expected))
    print(f"{backbone}: relative error after embedding and each block: {[f'{e:.1e}' for e in errors]}")
    assert max(errors) < 1e-4, errors


def test_vit_tiny_matches_segment_anything_block_by_block(sam_checkpoint):
    # Two identical slices per token: checks the depth inflation of the patch kernel too.
    assert_block_by_block_parity("vit_tiny", sam_checkpoint, depth_token=2)


@pytest.mark.slow
def test_vit_b_matches_segment_anything_block_by_block(sam_checkpoint):
    assert_block_by_block_parity("vit_b", sam_checkpoint, depth_token=1)


def test_identical_slices_give_the_same_tokens_at_every_depth(sam_checkpoint):
    """Several tokens deep, with 3D windows (2 tokens deep) and global blocks: zero depth terms
    and zero adapters make every slice of a constant-along-z volume equal to the one-slice
    result. (The grid is a multiple of the window: zero padding tokens, which SAM lets take
    part in attention, would make the last window differ.)"""
    path, _ = sam_checkpoint("vit_tiny")
    common = dict(backbone="vit_tiny", num_classes=2, window_size=(2, 3, 3), adapter_blocks=(0, 1, 2, 3))
    one_slice = build_network(NetworkConfig(patch_size=(4, 96, 96), token_size=(4, 16, 16), **common), path).eval()
    deep = build_network(NetworkConfig(patch_size=(16, 96, 96), token_size=(4, 16, 16), **common), path).eval()
    slice_ = torch.randn(1, 1, 1, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = one_slice.encoder(slice_.expand(1, 1, 4, 96, 96))
        actual = deep.encoder(slice_.expand(1, 1, 16, 96, 96))
    for feature_deep, feature_one in zip(actual, expected):
        assert feature_deep.shape[1] == 4
        for depth in range(4):
            assert relative_error(feature_deep[:, depth], feature_one[:, 0]) < 1e-5
