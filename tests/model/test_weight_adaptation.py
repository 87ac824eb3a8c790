"""The pure weight-adaptation functions: the inflation rule, position resizing, SAM's rel-pos."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnsam3d.model.sam_reference import import_sam_modeling
from nnsam3d.model.weight_adaptation import (
    adapt_sam_encoder_state,
    inflate_patch_embedding,
    relative_position_embeddings,
    resample_patch_kernel,
    resize_absolute_position_embedding,
    resize_table_1d,
)

generator = torch.Generator().manual_seed(0)


def sam_kernel(dim: int = 8, size: int = 16) -> torch.Tensor:
    return torch.randn(dim, 3, size, size, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("channels, depth", [(1, 1), (1, 4), (3, 2), (4, 3)])
def test_identical_slices_and_channels_give_sams_token(channels, depth):
    weight = sam_kernel()
    bias = torch.randn(8, generator=generator, dtype=torch.float64)
    image = torch.randn(1, 1, 16, 16, generator=generator, dtype=torch.float64)
    sam_token = F.conv2d(image.expand(1, 3, 16, 16), weight, bias, stride=16)  # SAM sees (s, s, s)

    inflated = inflate_patch_embedding(weight, channels, (depth, 16, 16))
    assert inflated.shape == (8, channels, depth, 16, 16)
    volume = image[:, :, None].expand(1, channels, depth, 16, 16)
    token = F.conv3d(volume, inflated, bias, stride=(depth, 16, 16))
    torch.testing.assert_close(token[:, :, 0], sam_token, rtol=1e-12, atol=1e-12)


def test_finer_tokens_see_what_sam_sees_on_the_upsampled_content():
    """Token 8: the kernel responds to an 8x8 patch as SAM's responds to it upsampled to 16x16."""
    weight = sam_kernel()
    patch = torch.randn(1, 1, 8, 8, generator=generator, dtype=torch.float64)
    upsampled = F.interpolate(patch, scale_factor=2, mode="nearest").expand(1, 3, 16, 16)
    expected = F.conv2d(upsampled, weight)

    inflated = inflate_patch_embedding(weight, 1, (1, 8, 8))
    assert inflated.shape == (8, 1, 1, 8, 8)
    token = F.conv3d(patch[:, :, None], inflated)
    torch.testing.assert_close(token[:, :, 0], expected, rtol=1e-12, atol=1e-12)
    # For an integer factor the rule is the 2x2 sum of SAM's kernel.
    torch.testing.assert_close(resample_patch_kernel(weight, (8, 8)), F.avg_pool2d(weight, 2) * 4)


def test_resample_kernel_is_identity_at_the_same_size():
    weight = sam_kernel()
    torch.testing.assert_close(resample_patch_kernel(weight, (16, 16)), weight, rtol=0, atol=0)


def test_absolute_position_embedding_resize():
    pos = torch.randn(1, 64, 64, 6, generator=generator)
    assert resize_absolute_position_embedding(pos, (64, 64)) is pos
    resized = resize_absolute_position_embedding(pos, (8, 12))
    assert resized.shape == (1, 8, 12, 6)
    constant = torch.ones(1, 64, 64, 6) * 3
    torch.testing.assert_close(resize_absolute_position_embedding(constant, (5, 7)), torch.ones(1, 5, 7, 6) * 3)


@pytest.mark.parametrize(
    "q_size, k_size, table_length", [(14, 14, 27), (8, 8, 27), (64, 64, 127), (8, 8, 127), (5, 7, 13), (3, 3, 3)]
)
def test_relative_position_embeddings_match_segment_anything(q_size, k_size, table_length):
    get_rel_pos = import_sam_modeling().image_encoder.get_rel_pos
    table = torch.randn(table_length, 4, generator=generator)
    torch.testing.assert_close(
        relative_position_embeddings(q_size, k_size, table), get_rel_pos(q_size, k_size, table), rtol=0, atol=0
    )


def test_resize_table_1d():
    table = torch.randn(5, 3, generator=generator)
    assert resize_table_1d(table, 5) is table
    ramp = torch.arange(4.0)[:, None].expand(4, 2)
    assert resize_table_1d(ramp, 8).shape == (8, 2)
    # Linear interpolation with half-pixel centres (get_rel_pos's align_corners=False): output
    # i samples the ramp at (i + 0.5) * 4 / 8 - 0.5, clamped to the ends of the table.
    positions = ((torch.arange(8.0) + 0.5) * 4 / 8 - 0.5).clamp(0, 3)
    torch.testing.assert_close(resize_table_1d(ramp, 8), positions[:, None].expand(8, 2))
    shrunk = ((torch.arange(3.0) + 0.5) * 4 / 3 - 0.5).clamp(0, 3)
    torch.testing.assert_close(resize_table_1d(ramp, 3), shrunk[:, None].expand(3, 2))
    torch.testing.assert_close(resize_table_1d(torch.ones(3, 2), 6), torch.ones(6, 2))


def test_adapt_sam_encoder_state_inflates_the_kernel_and_drops_the_neck():
    state = {
        "patch_embed.proj.weight": sam_kernel(4).float(),
        "patch_embed.proj.bias": torch.zeros(4),
        "pos_embed": torch.zeros(1, 64, 64, 4),
        "neck.0.weight": torch.zeros(256, 4, 1, 1),
    }
    adapted = adapt_sam_encoder_state(state, in_channels=2, token_size=(2, 16, 16))
    assert adapted["patch_embed.proj.weight"].shape == (4, 2, 2, 16, 16)
    assert adapted["pos_embed"] is state["pos_embed"]
    assert not any(key.startswith("neck.") for key in adapted)
