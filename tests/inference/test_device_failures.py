"""Which errors retire a Ray worker (its device is broken for good) and which only fail a case."""

from __future__ import annotations

import errno

import pytest
import torch

from nnsam3d.inference.device_failures import DeviceFailure, is_device_failure
from nnsam3d.io.geometry import ImageReadError


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` ..."),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    DeviceFailure("GPU 0 fell off the bus"),
])
def test_sticky_device_errors_retire_the_worker(error):
    assert is_device_failure(error)


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),  # depends on the case
    ImageReadError("case_0000.nii.gz: not a NIfTI file"),
    ValueError("expected a preprocessed image (1, z, y, x), got shape (2, 4, 4, 4)"),
    RuntimeError("shape '[2, 3]' is invalid for input of size 7"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_case_errors_do_not(error):
    assert not is_device_failure(error)
