"""The cropped spatial transform against batchgenerators' SpatialTransform, its reference: same
seed, same draws, same patches (interpolating only the covered region changes nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nnsam3d.trainers import cropped_spatial_transform
from batchgenerators.transforms.abstract_transforms import Compose

from nnsam3d.trainers.augmentation import AugmentationSettings, read_size_for, spatial_transform
from nnsam3d.trainers.cropped_spatial_transform import covered_region
from nnsam3d.trainers.reference_transforms import reference_spatial_pipeline


def _block(read_size, seed: int, batch: int = 2, channels: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, a sharp-edged bright box near one side and labels that
    # follow it: every kind of content the spline and the nearest-neighbour lookup see.
    data = rng.normal(size=(batch, channels, *read_size)).astype(np.float32)
    seg = np.zeros((batch, 1, *read_size), dtype=np.int16)
    box = tuple(slice(1, max(2, s // 3)) for s in read_size)
    data[(slice(None), slice(None), *box)] += 40.0
    seg[(slice(None), slice(None), *box)] = 2
    seg[(slice(None), slice(None), *(slice(s // 2, s // 2 + 3) for s in read_size))] = 1
    return {"data": data, "seg": seg}


def _compare(settings: AugmentationSettings, batches: int, seed: int = 0, channels: int = 1) -> int:
    """Runs both spatial steps over the same blocks and draws; returns how many samples were
    interpolated (not just cropped), so that a test knows the comparison covered interpolation."""
    read_size = read_size_for(settings)
    ours = spatial_transform(settings)
    reference = Compose(reference_spatial_pipeline(ours))
    interpolated = 0
    for index in range(batches):
        block = _block(read_size, seed + index, channels=channels)
        np.random.seed(seed * 1000 + index)
        expected = reference(**{k: v.copy() for k, v in block.items()})
        state_after_reference = np.random.get_state()[1].copy()
        np.random.seed(seed * 1000 + index)
        got = ours(**{k: v.copy() for k, v in block.items()})
        np.testing.assert_array_equal(np.random.get_state()[1], state_after_reference)  # same draws
        assert got["data"].dtype == np.float32 and got["seg"].dtype == np.float32
        np.testing.assert_allclose(got["data"], expected["data"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got["seg"], expected["seg"])
        centre = tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(read_size, settings.patch_size))
        cropped = block["data"][(slice(None), slice(None), *centre)]
        interpolated += sum(not np.array_equal(g, c) for g, c in zip(got["data"], cropped))
    return interpolated


def test_settings_reach_the_transform():
    in_plane = spatial_transform(AugmentationSettings(patch_size=(3, 40, 36), thin_axis=0, rotation_degrees=180.0))
    assert in_plane.patch_size == (3, 40, 36) and in_plane.spatial_axes == (1, 2) and in_plane.thin_axis == 0
    assert in_plane.block_size == read_size_for(AugmentationSettings(patch_size=(3, 40, 36), thin_axis=0,
                                                                     rotation_degrees=180.0))
    assert in_plane.angle_x == (-math.pi, math.pi)
    full = spatial_transform(AugmentationSettings(patch_size=(12, 14, 16), scale_range=(0.8, 1.3), p_scale=0.4))
    limit = math.radians(30.0)
    assert full.patch_size == (12, 14, 16) and full.angle_y == full.angle_z == (-limit, limit)
    assert full.scale == (0.8, 1.3) and full.p_scale_per_sample == 0.4 and full.p_rot_per_sample == 0.2


def test_full_3d_rotation_and_scaling_equal_batchgenerators():
    settings = AugmentationSettings(patch_size=(12, 14, 16), p_rotation=0.6, p_scale=0.6)
    assert _compare(settings, batches=6) >= 4


def test_in_plane_rotation_by_up_to_180_degrees_equals_batchgenerators():
    settings = AugmentationSettings(patch_size=(3, 40, 36), thin_axis=0, rotation_degrees=180.0,
                                    p_rotation=0.7, p_scale=0.7)
    assert _compare(settings, batches=6, seed=3) >= 4


@pytest.mark.parametrize("thin_axis", [None, 0])
def test_several_image_channels_equal_batchgenerators(thin_axis):
    """Multi-modal cases (say four MRI sequences): every channel moves with the same draw."""
    patch = (3, 30, 28) if thin_axis == 0 else (10, 12, 14)
    settings = AugmentationSettings(patch_size=patch, thin_axis=thin_axis, rotation_degrees=180.0 if thin_axis == 0
                                    else 30.0, p_rotation=0.6, p_scale=0.6)
    assert _compare(settings, batches=4, seed=17, channels=3) >= 2


def test_elastic_deformation_equals_batchgenerators():
    settings = AugmentationSettings(patch_size=(10, 12, 12), elastic=True, p_elastic=0.8, p_rotation=0.5,
                                    p_scale=0.5)
    assert _compare(settings, batches=3, seed=5) >= 2


def test_the_default_probabilities_equal_batchgenerators_over_many_draws():
    settings = AugmentationSettings(patch_size=(8, 10, 12))
    assert _compare(settings, batches=12, seed=7) >= 3


@pytest.mark.parametrize("settings", [
    AugmentationSettings(patch_size=(12, 14, 16), p_rotation=0.0, p_scale=1.0, scale_range=(0.6, 1.6)),
    AugmentationSettings(patch_size=(3, 40, 36), thin_axis=0, p_rotation=0.0, p_scale=1.0, scale_range=(0.6, 1.6)),
], ids=["3d", "in-plane"])
def test_scaled_grids_run_as_matrices_and_equal_batchgenerators(settings, monkeypatch):
    """Scaling alone (a fifth of the samples) takes the separable path; a rotated grid is not
    separable."""
    separable = []
    original = cropped_spatial_transform.axis_positions
    monkeypatch.setattr(cropped_spatial_transform, "axis_positions",
                        lambda coords: separable.append(original(coords)) or separable[-1])
    assert _compare(settings, batches=4, seed=13) == 8
    assert len(separable) == 8 and all(p is not None for p in separable)
    rotated = cropped_spatial_transform.rotate_coords_2d(np.stack(np.meshgrid(np.arange(4.0), np.arange(5.0),
                                                                              indexing="ij")), 0.3)
    assert original(rotated) is None


def test_the_margin_is_what_keeps_the_crop_exact(monkeypatch):
    """Without the margin beyond the spline's taps the prefilter sees the cut: the result moves
    by far more than the tolerance (so the comparison above can fail)."""
    settings = AugmentationSettings(patch_size=(3, 40, 36), thin_axis=0, rotation_degrees=180.0,
                                    p_rotation=1.0, p_scale=0.0)
    monkeypatch.setattr(cropped_spatial_transform, "SPLINE_MARGIN", 0)
    with pytest.raises(AssertionError):
        _compare(settings, batches=2, seed=3)


def test_covered_region_holds_every_tap_and_stays_inside_the_block():
    coords = np.array([[[2.3, 9.9]], [[-4.0, 5.5]]])  # (dim 2, 1 x 2 grid)
    low, high = covered_region(coords, (30, 8), order=0)
    assert low.tolist() == [1, 0] and high.tolist() == [11, 7]
    low, high = covered_region(coords, (30, 8), order=3)
    margin = cropped_spatial_transform.SPLINE_MARGIN
    assert low.tolist() == [0, 0] and high.tolist() == [min(30, 9 + 3 + margin), 8]


def test_a_grid_wholly_outside_the_block_gives_zeros_like_map_coordinates(monkeypatch):
    transform = spatial_transform(AugmentationSettings(patch_size=(4, 6, 6), p_rotation=1.0))
    grid = np.stack(np.meshgrid(*(np.arange(s) + 400.0 for s in (4, 6, 6)), indexing="ij"))
    monkeypatch.setattr(transform, "draw_sampling_grid", lambda: grid.copy())
    reads = []
    data_out, seg_out = np.full((1, 4, 6, 6), 7.0, dtype=np.float32), np.full((1, 4, 6, 6), 3, dtype=np.int16)
    transform.augment_sample(lambda low, high: reads.append((low, high)), data_out, seg_out)
    assert not data_out.any() and not seg_out.any() and not reads  # nothing read


@pytest.mark.parametrize("thin_axis", [1, 2])
def test_in_plane_along_any_thin_axis_equals_batchgenerators(thin_axis):
    patch = [10, 12, 14]
    patch[thin_axis] = 3
    settings = AugmentationSettings(patch_size=tuple(patch), thin_axis=thin_axis, rotation_degrees=180.0,
                                    p_rotation=0.7, p_scale=0.7)
    assert _compare(settings, batches=4, seed=11) >= 2


def test_the_region_read_is_what_the_draw_covers(monkeypatch):
    """Reads stay inside the block, and an unrotated, unscaled patch reads exactly the patch."""
    settings = AugmentationSettings(patch_size=(2, 120, 110), thin_axis=0, rotation_degrees=180.0,
                                    p_rotation=0.5, p_scale=0.5)
    transform, block = spatial_transform(settings), read_size_for(settings)
    data = np.random.default_rng(0).normal(size=(1, *block)).astype(np.float32)
    reads = []

    def read_region(low, high):
        reads.append((tuple(int(v) for v in low), tuple(int(v) for v in high)))
        region = (slice(None), *(slice(int(a), int(b)) for a, b in zip(low, high)))
        return data[region], np.zeros_like(data[region], dtype=np.int16)

    np.random.seed(4)
    for _ in range(12):
        transform.augment_sample(read_region, np.empty((1, *settings.patch_size), np.float32),
                                 np.empty((1, *settings.patch_size), np.int16))
    centre = tuple((b - p) // 2 for b, p in zip(block, settings.patch_size))
    assert (centre, tuple(c + p for c, p in zip(centre, settings.patch_size))) in reads
    assert len(reads) == 12 and all(0 <= a < b <= s for low, high in reads for a, b, s in zip(low, high, block))
    assert any(high[1] - low[1] < block[1] for low, high in reads if low != centre)  # less than the block


@pytest.mark.parametrize("thin_axis", [None, 1])
def test_the_separable_path_equals_map_coordinates_with_samples_outside_the_region(thin_axis):
    rng = np.random.default_rng(3)
    region = rng.normal(size=(2, 9, 11, 10)) + 5.0
    axes = [a for a in range(3) if a != thin_axis]
    positions = [np.linspace(-3.2, region.shape[1 + a] + 2.7, n) for a, n in zip(axes, (7, 8, 6))]
    grid = np.stack(np.meshgrid(*positions, indexing="ij"))
    shape = [region.shape[1 + a] if a == thin_axis else len(positions[axes.index(a)]) for a in range(3)]
    out = np.empty((2, *shape), dtype=np.float32)
    cropped_spatial_transform.interpolate(region, grid, 3, out, thin_axis)
    expected = np.empty_like(out)
    for image, target in zip(cropped_spatial_transform._images(region, thin_axis),
                             cropped_spatial_transform._images(expected, thin_axis)):
        target[...] = ndimage.map_coordinates(image, grid, order=3, mode="constant", cval=0.0)
    assert (expected == 0).any() and (expected != 0).any()  # samples inside and outside
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
