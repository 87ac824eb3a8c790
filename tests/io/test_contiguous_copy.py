"""The canonical reordering's copy (PyTorch's permuting copy) is NumPy's, bit for bit, for every
flip and axis order, dtype and byte order, and never hands back the caller's memory when it
had to reorder; the in-memory prediction path leaves the caller's image unchanged."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from nnsam3d.io.geometry import contiguous_copy, from_canonical, to_canonical, ImageGeometry

AXIS_ORDERS = list(itertools.permutations(range(3)))
FLIPS = [flips for r in range(4) for flips in itertools.combinations(range(3), r)]


@pytest.mark.parametrize("order", AXIS_ORDERS)
def test_every_flip_and_axis_order_copies_as_numpy_does(order):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    for flips in FLIPS:
        view = np.flip(data, flips).transpose(order) if flips else data.transpose(order)
        copied = contiguous_copy(view)
        np.testing.assert_array_equal(copied, np.ascontiguousarray(view))
        assert copied.flags.c_contiguous and copied.flags.writeable
        if not view.flags.c_contiguous:
            assert not np.shares_memory(copied, data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.uint32, np.uint8, np.int64, bool,
                                   ">f4", ">i2"])
def test_dtypes_and_byte_orders_pytorch_cannot_hold_fall_back_to_numpy(dtype):
    data = (np.arange(210).reshape(5, 6, 7) % 7).astype(dtype)
    view = data[::-1, :, ::-1].transpose(2, 0, 1)
    copied = contiguous_copy(view)
    assert copied.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(copied, np.ascontiguousarray(view))


def test_read_only_input_is_copied_without_complaint():
    data = np.random.default_rng(1).random((4, 5, 6))
    data.setflags(write=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        copied = contiguous_copy(data.transpose(2, 1, 0))
    assert not caught
    np.testing.assert_array_equal(copied, data.transpose(2, 1, 0))
    copied[0, 0, 0] = -1.0  # the copy is writable and the input untouched
    assert data[0, 0, 0] != -1.0


def test_an_oblique_file_goes_to_canonical_order_and_back_exactly():
    data = np.random.default_rng(2).random((7, 6, 5)).astype(np.float32)
    rotation = np.array([[0.0, 0.0, -2.0], [-1.0, 0.0, 0.0], [0.0, 1.5, 0.0]])  # LPS-like, permuted
    affine = np.eye(4)
    affine[:3, :3] = rotation
    canonical = to_canonical(data, affine)
    geometry = ImageGeometry(shape=data.shape, affine=tuple(map(tuple, affine)))
    assert canonical.shape == geometry.canonical_shape and canonical.flags.c_contiguous
    np.testing.assert_array_equal(from_canonical(canonical, geometry), data)
