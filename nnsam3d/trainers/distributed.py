"""Data-parallel training: process-group setup, batch splitting and the one-node launcher.

Under ``torchrun`` (any number of nodes) the rendezvous comes from the environment
(``env://``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). ``--num-gpus N`` is a
one-node shortcut that spawns N processes and sets those variables itself. NCCL connects the
GPUs; gloo is used on the CPU (the tests run two CPU processes).

Each rank trains on its share of the global batch (the plans' ``batch_size``) and its share of
the foreground-centred patches, so that N GPUs together see what one GPU would. Only rank 0
writes files.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from nnsam3d import devices

PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)
"""Long enough for a slow collective (e.g. rank 0 writing a checkpoint while the others wait in the
next all-reduce)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank among world_size processes, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all ranks (a new tensor when distributed, ``tensor`` itself when
        alone; float64 counts stay exact)."""
        if not self.is_distributed:
            return tensor
        total = tensor.detach().clone().to(self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def mean(self, value: float) -> float:
        return float(self.sum(torch.tensor([value], dtype=torch.float64))[0]) / self.world_size

    def value_of_main(self, value: int) -> int:
        """Rank 0's ``value`` on every rank, for decisions all ranks must share (time budget)."""
        if not self.is_distributed:
            return int(value)
        shared = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.broadcast(shared, src=0)
        return int(shared.item())

    def gather_by_rank(self, value) -> dict[str, object]:
        """Every rank's ``value`` (any picklable object) by rank number as a string; all ranks take part."""
        if not self.is_distributed:
            return {"0": value}
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return {str(rank): item for rank, item in enumerate(gathered)}

    def wrap(self, network: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``network`` (which already sits on ``device``).

        DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts
        from the same weights even when they were initialised at random.
        """
        if not self.is_distributed:
            return network
        # A single-input-channel kernel (C, 1, k, k, k) has two equally valid contiguous stride
        # patterns; DDP then warns that the gradient's differ from its bucket's. Nothing is wrong.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """The predictor's rule (``auto``: CUDA when available; ``cuda`` without a GPU is a
    ValueError), on this rank's GPU."""
    device = devices.resolve_device(request)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_request: str) -> DistributedContext:
    """Join the process group described by the environment, or run alone when there is none."""
    if not launched_by_torchrun():
        return DistributedContext(device=resolve_device(device_request))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=PROCESS_GROUP_TIMEOUT,
        )
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def split_batch(global_batch_size: int, foreground_samples: int, world_size: int, rank: int) -> tuple[int, int]:
    """(patches, foreground-centred patches) of ``rank``'s share of a global batch.

    The global batch is split as evenly as possible (the first ranks take one more when it does
    not divide); its foreground-centred patches are the last ``foreground_samples`` of the
    global batch, so across ranks the counts add up to exactly the single-process ones.
    """
    if global_batch_size < world_size:
        raise ValueError(
            f"batch size {global_batch_size} cannot be split over {world_size} processes; "
            f"use fewer GPUs or plans with a larger batch"
        )
    sizes = [global_batch_size // world_size + (1 if r < global_batch_size % world_size else 0) for r in range(world_size)]
    low = sum(sizes[:rank])
    high = low + sizes[rank]
    first_foreground = global_batch_size - foreground_samples
    return sizes[rank], max(0, high - max(low, first_foreground))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawned_entry(local_rank: int, world_size: int, port: int, function, arguments: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world_size),
        }
    )
    function(*arguments)


def spawn_on_this_node(num_processes: int, function, *arguments) -> None:
    """Run ``function(*arguments)`` in ``num_processes`` new processes that form one process group.

    ``function`` must be importable (a module-level function); each process finds its rank in
    the environment, exactly as under torchrun. Raises if any process fails.
    """
    import torch.multiprocessing as multiprocessing

    multiprocessing.spawn(
        _spawned_entry, args=(num_processes, free_port(), function, arguments), nprocs=num_processes, join=True
    )
