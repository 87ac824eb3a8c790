"""Training checkpoints: ``checkpoint_latest/best/final.pth`` through ``io.checkpoint_file``.

A checkpoint holds the network weights, the plans (with the network configuration the trainer
actually built) and dataset.json, so the predictor needs nothing else; and the training state
(optimiser, schedule, scaler, epoch, random generators, log history) so that ``--c`` resumes
exactly. Everything is converted to what ``torch.load(weights_only=True)`` accepts: numpy's and
Python's generator states become lists of ints.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnsam3d.io.checkpoint_file import ModelCheckpoint, load_checkpoint, save_checkpoint

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
FINAL = "checkpoint_final.pth"


def capture_rng_state() -> dict:
    """The state of Python's, numpy's and torch's (CPU and CUDA) global generators, weights_only-safe."""
    python_version, python_internal, python_gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def bare_module(network: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def write_training_checkpoint(path: str | Path, *, trainer_name: str, fold: str, epoch: int, plans: dict,
                              dataset_json: dict, network: nn.Module, training_state: dict) -> None:
    """Write atomically (a crash mid-write leaves the previous file as it was)."""
    save_checkpoint(
        ModelCheckpoint(
            trainer_name=trainer_name,
            fold=fold,
            epoch=epoch,
            plans=plans,
            dataset_json=dataset_json,
            network_weights=bare_module(network).state_dict(),
            training_state=training_state,
        ),
        path,
    )


def checkpoint_to_resume(fold_folder: str | Path) -> tuple[Path, ModelCheckpoint] | None:
    """The checkpoint ``--c`` continues from: the one with the most epochs among final and latest.

    ``checkpoint_best.pth`` is not resumed from: it is older than latest and resuming it would
    repeat epochs. None when the fold has no checkpoint yet.
    """
    loaded = []
    for name in (LATEST, FINAL):
        path = Path(fold_folder) / name
        if path.is_file():
            loaded.append((path, load_checkpoint(path)))
    if not loaded:
        return None
    # On equal epochs the later entry (final) wins: it is what the finished run left.
    return max(reversed(loaded), key=lambda entry: entry[1].epoch)
