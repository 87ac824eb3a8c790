"""Token size, candidate patch sizes and windows from spacing and median shape."""

import pytest

from nnsam3d.model.layout import window_layout
from nnsam3d.planners.network_geometry import (
    MAX_WINDOW_PADDING_RATIO,
    MIN_TOKENS_PER_AXIS,
    SAM_WINDOW,
    depth_token_size,
    depth_window_size,
    patch_size_cap,
    patch_size_path,
    token_size_for,
    window_size_for,
)

CT_SPACING = (2.5, 0.8, 0.8)
CT_MEDIAN_SHAPE = (300, 512, 512)


@pytest.mark.parametrize(
    "spacing, median_shape, expected",
    [
        (CT_SPACING, CT_MEDIAN_SHAPE, (4, 16, 16)),  # 12.8 mm wide in-plane, 10 mm deep
        ((1.0, 1.0, 1.0), (200, 200, 200), (16, 16, 16)),  # isotropic: cubic tokens
        ((5.0, 0.7, 0.7), (40, 512, 512), (2, 16, 16)),  # 11.2 mm / 5 mm = 2.2 slices
        ((0.5, 1.0, 1.0), (400, 300, 300), (16, 16, 16)),  # finer than in-plane: capped at 16
        ((3.0, 1.0, 1.0), (24, 64, 64), (2, 8, 8)),  # small image: finer in-plane token
    ],
)
def test_token_size_is_roughly_isotropic_in_mm(spacing, median_shape, expected):
    assert token_size_for(spacing, median_shape) == expected


def test_depth_token_shrinks_so_that_few_slices_still_make_several_tokens():
    # Isotropic data would ask for 16-voxel deep tokens, but 20 slices hold only one.
    assert depth_token_size((1.0, 1.0, 1.0), 16, median_depth=20) == 4
    assert depth_token_size((1.0, 1.0, 1.0), 16, median_depth=3) == 1


def test_patch_path_grows_on_every_axis_and_keeps_mm_extent_balanced():
    token = token_size_for(CT_SPACING, CT_MEDIAN_SHAPE)
    path = patch_size_path(CT_SPACING, token, CT_MEDIAN_SHAPE)
    assert path[0] == tuple(MIN_TOKENS_PER_AXIS * t for t in token)
    assert path[-1] == (300, 512, 512)
    for smaller, larger in zip(path, path[1:]):
        assert all(a <= b for a, b in zip(smaller, larger)) and smaller != larger
    for patch in path:
        assert all(p % t == 0 for p, t in zip(patch, token))
        assert patch[1] == patch[2]
        extent_mm = [p * s for p, s in zip(patch, CT_SPACING)]
        # Until the in-plane cap, depth and width in mm differ by less than one token (12.8 mm).
        if patch[1] < 512 and patch[0] > path[0][0]:
            assert abs(extent_mm[0] - extent_mm[1]) < 12.8 + 1e-6


def test_patch_cap_is_the_median_shape_rounded_up_to_whole_tokens():
    assert patch_size_cap((30, 100, 90), (4, 16, 16)) == (32, 112, 96)
    path = patch_size_path((1.0, 1.0, 1.0), (4, 16, 16), (30, 100, 90))
    assert path[-1] == (32, 112, 96)


def test_patch_path_for_an_image_smaller_than_the_minimum_is_the_image():
    assert patch_size_path((1.0, 1.0, 1.0), (1, 8, 8), (3, 20, 20)) == [(3, 24, 24)]


@pytest.mark.parametrize("depth_tokens, window", [(1, 1), (3, 3), (4, 4), (6, 3), (8, 4), (75, 3), (7, 4)])
def test_depth_window_is_a_few_tokens_wasting_little_padding(depth_tokens, window):
    assert depth_window_size(depth_tokens) == window


def test_in_plane_window_is_sams_where_it_tiles_else_balanced():
    assert window_size_for((8, 28, 42)) == (4, 14, 14)
    assert window_size_for((4, 8, 10)) == (4, 8, 10)
    # 32 tokens: three windows of 11 (33 padded) instead of three of 14 (42 padded).
    assert window_size_for((8, 32, 32)) == (4, 11, 11)
    assert window_size_for((8, 15, 23)) == (4, 8, 12)
    # 5 slices deep with padded in-plane windows: no depth window of 2..4 keeps the block within
    # the budget (6 / 5 * 16 / 15 * 24 / 23 > 1.25), so window blocks attend within one slice.
    assert window_size_for((5, 15, 23)) == (1, 8, 12)
    assert window_size_for((5, 16, 16)) == (3, 8, 8)


@pytest.mark.parametrize("depth", range(1, 40))
@pytest.mark.parametrize("in_plane", [1, 5, 13, 14, 15, 17, 21, 23, 29, 32, 37, 45, 64])
def test_window_padding_stays_within_the_budget(depth, in_plane):
    grid = (depth, in_plane, in_plane + 3)
    window = window_size_for(grid)
    assert window_layout(grid, window).padding_ratio <= MAX_WINDOW_PADDING_RATIO
    assert all(w > min(g, SAM_WINDOW) / 2 for w, g in zip(window[1:], grid[1:]))
