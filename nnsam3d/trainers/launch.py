"""Run a training request: in this process, under torchrun, or spread over N local processes.

``nnsam3d_train`` calls :func:`launch_training`; code (tests, notebooks) may call
:func:`train_fold` directly and get the trainer back.
"""

from __future__ import annotations

import torch

from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.request import TrainingRequest
from nnsam3d.trainers.distributed import (
    init_distributed,
    launched_by_torchrun,
    shutdown_distributed,
    spawn_on_this_node,
)
from nnsam3d.trainers.registry import get_trainer_class


def train_fold(trainer_name: str, request: TrainingRequest) -> nnSAM3DTrainer:
    """Train (or validate) one fold in this process; joins the process group if torchrun made one."""
    trainer_class = get_trainer_class(trainer_name)
    context = init_distributed(request.device)
    try:
        trainer = trainer_class(request, context)
        trainer.run()
    finally:
        shutdown_distributed()
    return trainer


def launch_training(trainer_name: str, request: TrainingRequest, num_processes: int = 1) -> None:
    """``num_processes`` > 1 (``--num-gpus``): one process per GPU on this node (or per CPU process
    with ``--device cpu``), unless torchrun already started them.

    The trainer is constructed here first, so that a missing plan, dataset or SAM checkpoint is
    reported once and cleanly instead of from inside every spawned process.
    """
    if num_processes < 1:
        raise ValueError("--num-gpus must be at least 1")
    # Validation runs on rank 0 only; more processes would just wait.
    if num_processes == 1 or launched_by_torchrun() or request.validation_only:
        train_fold(trainer_name, request)
        return
    if request.device != "cpu":
        available = torch.cuda.device_count()
        if available < num_processes:
            fewer = f"use --num-gpus {available}, or " if available else ""
            raise ValueError(
                f"--num-gpus {num_processes} but torch sees {available} CUDA GPU(s); {fewer}"
                f"add --device cpu to run {num_processes} CPU processes."
            )
    get_trainer_class(trainer_name)(request)  # fail early, in this process, on user errors
    spawn_on_this_node(num_processes, train_fold, trainer_name, request)
