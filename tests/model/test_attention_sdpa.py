"""The SDPA attention path equals the explicit N x N path: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.attention3d import Attention3D, one_hot_key_coordinates
from nnsam3d.model.encoder3d import EncoderBlock3D

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def set_attention_path(module: torch.nn.Module, use_sdpa: bool) -> None:
    for attention in module.modules():
        if isinstance(attention, Attention3D):
            attention.use_sdpa = use_sdpa


def randomized_block(window, rel_pos_length_hw: int, rel_pos_length_depth: int, seed: int) -> EncoderBlock3D:
    """A block whose every parameter is random: depth and h/w tables, adapter included (the
    adapter's zero-initialised up-projection and the zero depth table would hide mistakes)."""
    block = EncoderBlock3D(
        dim=24, num_heads=3, mlp_ratio=2.0, window=window, rel_pos_length_hw=rel_pos_length_hw,
        rel_pos_length_depth=rel_pos_length_depth, adapter_dim=6,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            scale = 0.5 if "rel_pos" in name else 0.2
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return block


def outputs_and_gradients(block: EncoderBlock3D, x: torch.Tensor, use_sdpa: bool):
    set_attention_path(block, use_sdpa)
    block.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out = block(x)
    # A random projection of the output, so that every output entry weighs in the gradients.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    gradients = {name: p.grad.clone() for name, p in block.named_parameters()}
    return out.detach(), x.grad, gradients


@pytest.mark.parametrize(
    "grid, window, hw_length, depth_length",
    [
        ((4, 6, 5), (2, 3, 3), 11, 3),  # windowed, with padded partial windows
        ((3, 5, 4), None, 27, 5),  # global (depth table resized from 5 to 2 * 3 - 1)
        ((1, 7, 6), (2, 14, 14), 27, 3),  # one token deep, window clipped to the grid
    ],
)
def test_sdpa_equals_explicit_outputs_and_gradients(grid, window, hw_length, depth_length):
    block = randomized_block(window, hw_length, depth_length, seed=sum(grid))
    x = torch.randn(2, *grid, 24, generator=torch.Generator().manual_seed(3))
    out_sdpa, x_grad_sdpa, grads_sdpa = outputs_and_gradients(block, x, use_sdpa=True)
    out_explicit, x_grad_explicit, grads_explicit = outputs_and_gradients(block, x, use_sdpa=False)

    assert out_explicit.abs().max() > 0.1  # a real signal, not a comparison of zeros
    torch.testing.assert_close(out_sdpa, out_explicit, **TOLERANCE)
    torch.testing.assert_close(x_grad_sdpa, x_grad_explicit, **TOLERANCE)
    assert set(grads_sdpa) == {name for name, _ in block.named_parameters()}
    for name in grads_explicit:
        assert grads_explicit[name].abs().max() > 0, name  # every parameter takes part
        torch.testing.assert_close(grads_sdpa[name], grads_explicit[name], **TOLERANCE, msg=name)


def test_sdpa_path_sees_the_depth_table():
    """The widened head carries the depth bias: changing the depth table changes the output."""
    block = randomized_block((2, 3, 3), 5, 3, seed=1)
    x = torch.randn(1, 4, 3, 3, 24, generator=torch.Generator().manual_seed(2))
    before = block(x)
    with torch.no_grad():
        # Not a constant shift: q . c for every key is the same logit added to a whole row.
        block.attn.rel_pos_d.normal_(generator=torch.Generator().manual_seed(4))
    assert (block(x) - before).abs().max() > 1e-3


def test_one_hot_key_coordinates():
    keys = one_hot_key_coordinates((2, 3, 4), torch.float32, torch.device("cpu"))
    assert keys.shape == (24, 9)
    # key (z, h, w) = (1, 2, 3) is row 1 * 12 + 2 * 4 + 3 = 23
    assert keys[23].nonzero().flatten().tolist() == [1, 2 + 2, 2 + 3 + 3]
    assert torch.equal(keys.sum(dim=1), torch.full((24,), 3.0))
