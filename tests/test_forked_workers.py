"""A worker forked from a process that ran PyTorch's parallel CPU code (as the demo's process has
when it evaluates with -np 2) can run PyTorch itself: without nnsam3d's at-fork handler GNU
OpenMP hangs it at its first parallel region."""

from __future__ import annotations

import subprocess
import sys

FORKING_PARENT = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

import nnsam3d
from nnsam3d.io.geometry import contiguous_copy

def reorder(seed):
    volume = np.random.default_rng(seed).random((120, 256, 256), dtype=np.float32)
    return torch.get_num_threads(), float(contiguous_copy(volume.transpose(2, 1, 0)).sum())

torch.set_num_threads(2)
reorder(0)  # the parent's parallel region
with multiprocessing.get_context("fork").Pool(2) as pool:
    pool_results = pool.map(reorder, range(3))
with ProcessPoolExecutor(2) as executor:  # fork on Linux, as evaluate_folder's pool
    executor_results = list(executor.map(reorder, range(3)))
assert pool_results == executor_results == [(1, reorder(seed)[1]) for seed in range(3)]
print("threads in the parent", torch.get_num_threads())
"""


def test_forked_workers_run_pytorch_on_one_thread_without_hanging():
    completed = subprocess.run([sys.executable, "-c", FORKING_PARENT], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "threads in the parent 2" in completed.stdout  # the parent keeps its threads
