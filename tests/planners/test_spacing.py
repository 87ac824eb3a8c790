"""Target spacing: the median, and nnU-Net's rule for few thick slices."""

import pytest

from nnsam3d.planners.spacing import (
    coarse_axis_needing_finer_target,
    median_shape_at_spacing,
    median_spacing,
    target_spacing,
)


def test_target_is_the_median_for_near_isotropic_data():
    spacings = [(1.0, 0.7, 0.7), (1.5, 0.8, 0.8), (2.0, 0.9, 0.9)]
    shapes = [(200, 512, 512)] * 3
    assert target_spacing(spacings, shapes) == pytest.approx((1.5, 0.8, 0.8))
    assert median_spacing(spacings) == pytest.approx((1.5, 0.8, 0.8))


def test_few_thick_slices_use_the_10th_percentile_of_the_coarse_axis():
    # ACDC-like cine MRI: 10 mm slices in most cases, a few at 5-6 mm, about 10 slices per case.
    z_spacings = [5.0, 6.0] + [10.0] * 8
    spacings = [(z, 1.5, 1.5) for z in z_spacings]
    shapes = [(10, 220, 240)] * 10
    assert coarse_axis_needing_finer_target(spacings, shapes) == 0
    # numpy's linear 10th percentile of [5, 6, 10 x 8] lies 0.9 of the way from 5 to 6.
    assert target_spacing(spacings, shapes) == pytest.approx((5.9, 1.5, 1.5))


def test_coarse_axis_rule_also_applies_to_an_in_plane_axis():
    spacings = [(1.0, 1.0, x) for x in (4.0, 8.0, 8.0, 8.0, 8.0)]
    shapes = [(200, 200, 20)] * 5
    assert coarse_axis_needing_finer_target(spacings, shapes) == 2
    assert target_spacing(spacings, shapes)[2] == pytest.approx(5.6)


def test_anisotropic_spacing_with_many_slices_keeps_the_median():
    # Thick slices, but as many of them as in-plane voxels: nothing is gained by finer z.
    spacings = [(z, 1.0, 1.0) for z in (2.0, 5.0, 5.0, 5.0, 5.0)]
    shapes = [(200, 200, 200)] * 5
    assert coarse_axis_needing_finer_target(spacings, shapes) is None
    assert target_spacing(spacings, shapes) == pytest.approx((5.0, 1.0, 1.0))


def test_moderate_anisotropy_keeps_the_median():
    spacings = [(z, 1.0, 1.0) for z in (1.0, 2.5, 2.5, 3.0)]
    shapes = [(40, 512, 512)] * 4
    assert coarse_axis_needing_finer_target(spacings, shapes) is None
    assert target_spacing(spacings, shapes) == pytest.approx((2.5, 1.0, 1.0))


def test_coarse_axis_target_stays_coarser_than_in_plane():
    # A few thin-slice cases drag the 10th percentile below the in-plane spacing.
    z_spacings = [0.5, 0.5] + [4.0] * 8
    spacings = [(z, 1.0, 1.2) for z in z_spacings]
    shapes = [(12, 256, 256)] * 10
    target = target_spacing(spacings, shapes)
    assert target[0] > 1.2
    assert target[0] == pytest.approx(1.2, abs=1e-4)
    assert target[1:] == pytest.approx((1.0, 1.2))


def test_median_shape_at_spacing_resamples_each_case_before_the_median():
    spacings = [(2.0, 1.0, 1.0), (4.0, 1.0, 1.0), (1.0, 0.5, 0.5)]
    shapes = [(50, 100, 100), (30, 100, 100), (100, 300, 300)]
    # At (2, 1, 1) mm: (50, 100, 100), (60, 100, 100), (50, 150, 150).
    assert median_shape_at_spacing(spacings, shapes, (2.0, 1.0, 1.0)) == (50, 100, 100)
