"""3D windows and 3D attention against segment-anything's 2D ones."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.attention3d import Attention3D, window_partition_3d, window_unpartition_3d
from nnsam3d.model.layout import window_layout
from nnsam3d.model.sam_reference import import_sam_modeling

generator = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("grid, window", [((4, 6, 6), (2, 3, 3)), ((5, 7, 9), (2, 3, 4)), ((3, 4, 4), (8, 14, 14))])
def test_partition_then_unpartition_is_identity(grid, window):
    tokens = torch.randn(2, *grid, 5, generator=generator)
    layout = window_layout(grid, window)
    windows, padded = window_partition_3d(tokens, layout.window)
    assert padded == layout.padded_grid
    assert windows.shape == (2 * layout.num_windows, *layout.window, 5)
    torch.testing.assert_close(window_unpartition_3d(windows, layout.window, padded, grid), tokens, rtol=0, atol=0)


def test_window_is_clipped_to_the_grid_and_global_is_one_window():
    assert window_layout((3, 8, 8), (2, 14, 14)).window == (2, 8, 8)
    assert window_layout((3, 8, 8), (2, 14, 14)).padded_grid == (4, 8, 8)
    assert window_layout((3, 8, 8), None).num_windows == 1


def test_partition_matches_sams_in_plane():
    sam = import_sam_modeling().image_encoder
    tokens = torch.randn(2, 1, 17, 20, 4, generator=generator)
    ours, padded = window_partition_3d(tokens, (1, 7, 7))
    theirs, padded_hw = sam.window_partition(tokens[:, 0], 7)
    assert padded[1:] == padded_hw
    torch.testing.assert_close(ours[:, 0], theirs, rtol=0, atol=0)


def test_one_slice_attention_equals_sams_attention():
    sam = import_sam_modeling().image_encoder
    reference = sam.Attention(12, num_heads=3, qkv_bias=True, use_rel_pos=True, input_size=(6, 6))
    ours = Attention3D(12, num_heads=3, rel_pos_length_hw=11, rel_pos_length_depth=1)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        ours.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(4, 6, 6, 12, generator=generator)
    torch.testing.assert_close(ours(x[:, None])[:, 0], reference(x), rtol=1e-5, atol=1e-5)


def test_depth_table_biases_attention_along_depth():
    attention = Attention3D(8, num_heads=2, rel_pos_length_hw=3, rel_pos_length_depth=3)
    x = torch.randn(1, 2, 2, 2, 8, generator=generator)
    before = attention(x)
    with torch.no_grad():
        attention.rel_pos_d.normal_(generator=generator)
    assert not torch.allclose(attention(x), before)


def test_gradients_through_the_in_place_bias_are_exact():
    attention = Attention3D(4, num_heads=2, rel_pos_length_hw=5, rel_pos_length_depth=3).double()
    x = torch.randn(1, 2, 2, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    tables = [attention.rel_pos_d, attention.rel_pos_h, attention.rel_pos_w]
    with torch.no_grad():
        for table in tables:
            table.normal_(generator=generator)

    def run(x, depth, height, width):
        tables = {"rel_pos_d": depth, "rel_pos_h": height, "rel_pos_w": width}
        return torch.func.functional_call(attention, tables, (x,))

    inputs = [x] + [table.detach().clone().requires_grad_(True) for table in tables]
    assert torch.autograd.gradcheck(run, inputs)
