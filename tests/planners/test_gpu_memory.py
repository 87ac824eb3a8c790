"""The memory target: --gpu-memory-gb, else the GPU's total memory, else CPU training."""

import pytest

from nnsam3d.planners.gpu_memory import DEFAULT_CPU_MEMORY_GB, memory_target


def test_explicit_gigabytes_win_over_a_visible_gpu():
    target = memory_target(24, gpu=(80 * 2**30, "visible GPU 0 (H100)"))
    assert target.target_bytes == 24 * 2**30
    assert target.on_gpu and "--gpu-memory-gb 24" in target.source


def test_visible_gpu_total_memory():
    target = memory_target(None, gpu=(85_520_809_984, "visible GPU 0 (NVIDIA H100 80GB HBM3, 79.6 GiB)"))
    assert target.target_bytes == 85_520_809_984
    assert target.on_gpu and "H100" in target.source


def test_no_gpu_means_cpu_training_with_the_stated_default():
    target = memory_target(None, gpu=None)
    assert target.target_bytes == DEFAULT_CPU_MEMORY_GB * 2**30
    assert not target.on_gpu and "CPU" in target.source


def test_detection_on_this_machine_agrees_with_torch():
    import torch

    target = memory_target(None)
    assert target.on_gpu == torch.cuda.is_available()


def test_non_positive_gigabytes_are_refused():
    with pytest.raises(ValueError, match="--gpu-memory-gb"):
        memory_target(0)
