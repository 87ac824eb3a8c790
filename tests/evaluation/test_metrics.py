"""Metrics against values computed by hand on cubes, plates and spheres."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnsam3d.evaluation.metrics import (
    class_metrics,
    dice,
    hausdorff_distance_95,
    iou,
    normalized_surface_dice,
    surface,
    surface_distances,
)


def cube(shape=(20, 20, 20), start=(5, 5, 5), size=(10, 10, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def sphere(radius: float, shape=(40, 40, 40)) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2
    grid = np.indices(shape)
    return ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) <= radius**2


def test_identical_masks_are_perfect():
    mask = cube()
    metrics = class_metrics(mask, mask, (1.0, 1.0, 1.0))
    assert (metrics.dice, metrics.iou, metrics.nsd, metrics.hd95_mm) == (1.0, 1.0, 1.0, 0.0)
    assert metrics.reference_voxels == metrics.prediction_voxels == 1000


def test_cubes_shifted_by_half_their_size_overlap_by_half():
    reference = cube(shape=(20, 20, 30), start=(5, 5, 5))
    prediction = cube(shape=(20, 20, 30), start=(5, 5, 10))  # 500 of 1000 voxels shared
    assert dice(reference, prediction) == pytest.approx(2 * 500 / 2000)
    assert iou(reference, prediction) == pytest.approx(500 / 1500)


def test_surface_of_a_cube_is_its_outer_shell():
    assert surface(cube()).sum() == 10**3 - 8**3
    # touching the image border counts as a surface too
    assert surface(np.ones((4, 4, 4), dtype=bool)).sum() == 4**3 - 2**3


def plates(offset_axis: int, offset: int, shape=(12, 12, 12)):
    """Two one-voxel-thick 8 x 8 plates, the second shifted by ``offset`` voxels along ``offset_axis``
    (the plates lie across that axis)."""
    reference = np.zeros(shape, dtype=bool)
    index = [slice(2, 10)] * 3
    index[offset_axis] = 2
    reference[tuple(index)] = True
    prediction = np.zeros(shape, dtype=bool)
    index[offset_axis] = 2 + offset
    prediction[tuple(index)] = True
    return reference, prediction


def test_parallel_plates_are_exactly_their_distance_apart_in_mm():
    # Every voxel of one plate faces a voxel of the other 3 slices away: 3 x 2.5 mm = 7.5 mm.
    reference, prediction = plates(offset_axis=0, offset=3)
    spacing = (2.5, 0.8, 0.8)
    r_to_p, p_to_r = surface_distances(reference, prediction, spacing)
    np.testing.assert_allclose(r_to_p, 7.5)
    np.testing.assert_allclose(p_to_r, 7.5)
    assert hausdorff_distance_95(reference, prediction, spacing) == pytest.approx(7.5)
    assert normalized_surface_dice(reference, prediction, spacing, tolerance_mm=7.4) == 0.0
    assert normalized_surface_dice(reference, prediction, spacing, tolerance_mm=7.5) == 1.0
    assert dice(reference, prediction) == 0.0
    # The same shift in-plane is 3 x 0.8 mm: spacing is taken per axis.
    reference, prediction = plates(offset_axis=2, offset=3)
    assert hausdorff_distance_95(reference, prediction, spacing) == pytest.approx(2.4)


def test_hd95_ignores_a_single_outlier_voxel_that_the_maximum_would_not():
    reference, _ = plates(offset_axis=0, offset=0, shape=(30, 12, 12))
    prediction = reference.copy()
    prediction[25, 5, 5] = True  # one stray voxel 23 slices away
    r_to_p, p_to_r = surface_distances(reference, prediction, (1.0, 1.0, 1.0))
    assert p_to_r.max() == pytest.approx(23.0)  # the Hausdorff distance would be 23 mm
    # 64 of the prediction's 65 surface voxels are at 0: the 95th percentile is 0.
    assert hausdorff_distance_95(reference, prediction, (1.0, 1.0, 1.0)) == 0.0
    assert normalized_surface_dice(reference, prediction, (1.0, 1.0, 1.0), 2.0) == pytest.approx(128 / 129)


def test_concentric_spheres_two_voxels_apart():
    small, large = sphere(8), sphere(10)
    spacing = (1.5, 1.5, 1.5)
    # small lies inside large: overlap = |small|
    assert dice(small, large) == pytest.approx(2 * small.sum() / (small.sum() + large.sum()))
    assert dice(small, large) == pytest.approx(2 * 8**3 / (8**3 + 10**3), rel=0.03)  # continuous spheres
    assert iou(small, large) == pytest.approx(small.sum() / large.sum())
    # The surfaces are 2 voxels = 3 mm apart, up to the voxel staircase (±1 voxel).
    assert 3.0 - 1.5 <= hausdorff_distance_95(small, large, spacing) <= 3.0 + 1.5
    assert normalized_surface_dice(small, large, spacing, tolerance_mm=4.5 + 1e-6) == 1.0  # 3 voxels
    assert normalized_surface_dice(small, large, spacing, tolerance_mm=1.0) == 0.0  # less than a voxel


@pytest.mark.parametrize(
    "reference_empty, prediction_empty, expected",
    [
        (True, True, (math.nan, math.nan, math.nan, math.nan)),
        (True, False, (0.0, 0.0, 0.0, math.nan)),
        (False, True, (0.0, 0.0, 0.0, math.nan)),
    ],
)
def test_empty_mask_conventions(reference_empty, prediction_empty, expected):
    empty, full = np.zeros((6, 6, 6), bool), cube((6, 6, 6), (1, 1, 1), (3, 3, 3))
    metrics = class_metrics(empty if reference_empty else full, empty if prediction_empty else full, (1, 1, 1))
    got = (metrics.dice, metrics.iou, metrics.nsd, metrics.hd95_mm)
    np.testing.assert_equal(got, expected)  # NaN == NaN here
    assert set(metrics.to_json()) == {"Dice", "IoU", "NSD", "HD95_mm", "reference_voxels", "prediction_voxels"}
    assert metrics.to_json()["HD95_mm"] is None  # JSON has no NaN: undefined is null


def test_surface_distances_in_the_joint_box_equal_brute_force_on_the_full_grid():
    # Masks touching the image border and not: surfaces are computed on the cropped box, where
    # a border of the box must count as outside exactly when the full image says so.
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 1.1)
    for trial in range(20):
        shape = (9, 11, 10)
        reference, prediction = (cube(shape, tuple(rng.integers(0, 5, 3)), tuple(rng.integers(2, 6, 3)))
                                 & (rng.random(shape) < 0.8) for _ in range(2))
        if not reference.any() or not prediction.any():
            continue
        r_to_p, p_to_r = surface_distances(reference, prediction, spacing)
        points_r, points_p = np.argwhere(surface(reference)) * spacing, np.argwhere(surface(prediction)) * spacing
        between = cdist(points_r, points_p)
        np.testing.assert_allclose(r_to_p, between.min(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p_to_r, between.min(axis=0), rtol=1e-12, atol=1e-12)
