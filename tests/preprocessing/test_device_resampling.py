"""Images resampled as matrix products (the GPU path, run here on the CPU) equal scipy's zoom,
and a GPU device takes that path (the predictor hands its device over:
``tests/inference/test_device_argmax.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.preprocessing import resampling
from nnsam3d.preprocessing.device_resampling import resample_volume_on
from nnsam3d.preprocessing.resampling import resample_image

GRIDS = [
    ((12, 40, 41), (25, 31, 50), None),  # up and down along different axes
    ((30, 50, 40), (15, 46, 46), None),
    ((6, 40, 41), (15, 31, 50), 0),  # a coarse axis: nearest across, the spline in-plane
    ((40, 6, 41), (31, 15, 50), 1),
    ((40, 41, 6), (31, 50, 2), 2),
    ((1, 40, 41), (1, 31, 50), 0),  # one slice
    ((12, 40, 41), (12, 40, 41), None),  # nothing to do
]


@pytest.mark.parametrize("order", [3, 1, 0])
@pytest.mark.parametrize("shape, new_shape, separate_axis", GRIDS)
def test_matrix_products_equal_scipys_zoom(shape, new_shape, separate_axis, order):
    rng = np.random.default_rng(sum(shape) + order)
    image = (100 * rng.normal(size=(2, *shape))).astype(np.float32)  # two channels, CT-like range
    expected = resample_image(image, new_shape, separate_axis, order=order)
    resampled = np.stack([resample_volume_on("cpu", channel, new_shape, separate_axis, order) for channel in image])
    assert resampled.dtype == np.float32 and resampled.shape == expected.shape == (2, *new_shape)
    np.testing.assert_allclose(resampled, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_a_gpu_device_takes_the_matrix_path_and_a_cpu_keeps_scipy(monkeypatch):
    calls = []

    def recorded(device, volume, new_shape, separate_axis, order):
        calls.append(torch.device(device).type)
        return resample_volume_on("cpu", volume, new_shape, separate_axis, order)

    monkeypatch.setattr(resampling, "resample_volume_on", recorded)
    image = np.random.default_rng(0).normal(size=(2, 6, 20, 22)).astype(np.float32)
    on_cpu = resample_image(image, (9, 25, 17), 0, device="cpu")
    assert calls == []
    on_gpu = resample_image(image, (9, 25, 17), 0, device="cuda")  # never touches a GPU here
    assert calls == ["cuda", "cuda"]
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=1e-5)
