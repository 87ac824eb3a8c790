"""The loader and writer threads beside the network run PyTorch on one thread (on 2 cores a team
each made the overlapped run slower than one case after the other), and only they do: the
caller and threads created later keep the caller's count."""

from __future__ import annotations

import threading

import pytest
import torch

from nnsam3d.inference.case_pipeline import background_pool


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def threads_after_a_parallel_operation() -> int:
    torch.randn(512, 512).exp_().sum()  # a parallel region: PyTorch's lazy per-thread setup has run
    return torch.get_num_threads()


def test_only_the_background_thread_runs_on_one(two_threads):
    pool = background_pool("test-load")
    try:
        assert pool.submit(threads_after_a_parallel_operation).result() == 1
        assert pool.submit(threads_after_a_parallel_operation).result() == 1  # and stays so
        assert threads_after_a_parallel_operation() == 2
        later = []
        thread = threading.Thread(target=lambda: later.append(threads_after_a_parallel_operation()))
        thread.start()
        thread.join()
        assert later == [2]
    finally:
        pool.shutdown()
