"""The trained-model checkpoint file: the hand-over from training to inference.

A checkpoint carries the network weights together with the plans and ``dataset.json`` it was
trained with, so that a predictor needs nothing else. Training state (optimiser, scheduler,
scaler, RNG, logs) rides along for resuming and is skipped by readers that only predict.
Everything inside is tensors, numbers, strings, lists and dicts, so files load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnsam3d.io.atomic import torch_save_atomic
from nnsam3d.io.schema_version import require_schema_version

CHECKPOINT_FORMAT = "nnsam3d-checkpoint"
CHECKPOINT_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
"""Version 1 always held the full ``state_dict``; version 2 adds ``sam_source`` (slim checkpoints)."""


class CheckpointFormatError(ValueError):
    """A file that is not an nnsam3d checkpoint, or one from an incompatible version."""


@dataclass
class ModelCheckpoint:
    """What a checkpoint file holds.

    trainer_name: the trainer class that produced it (``-tr``).
    fold: "0".."4" or "all".
    epoch: epochs completed when it was written.
    plans: ``Plans.to_json()`` of the plans the network was trained with.
    dataset_json: ``DatasetDescription.to_json()``.
    network_weights: the network's ``state_dict``, without the frozen SAM tensors when
        ``sam_source`` is given (``nnsam3d.model.trained_weights``).
    training_state: trainer-owned state for resuming (absent in predict-only reads).
    sam_source: ``{"file_name", "sha256"}`` of the SAM file the frozen tensors are rebuilt from;
        None when ``network_weights`` is complete.
    """

    trainer_name: str
    fold: str
    epoch: int
    plans: dict
    dataset_json: dict
    network_weights: dict[str, torch.Tensor]
    training_state: dict[str, Any] = field(default_factory=dict)
    sam_source: dict | None = None

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "trainer_name": self.trainer_name,
            "fold": str(self.fold),
            "epoch": int(self.epoch),
            "plans": self.plans,
            "dataset_json": self.dataset_json,
            "network_weights": self.network_weights,
            "training_state": self.training_state,
            "sam_source": self.sam_source,
        }


def save_checkpoint(checkpoint: ModelCheckpoint, path: str | os.PathLike) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    torch_save_atomic(checkpoint.to_dict(), path)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
) -> ModelCheckpoint:
    """mmap: map the file instead of reading it, so tensors are read only when used (comparing
    checkpoints by their epoch reads almost nothing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        raise CheckpointFormatError(f"{path}: cannot be loaded as a checkpoint ({error}).") from error
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(f"{path}: not an nnsam3d checkpoint.")
    if content.get("schema_version") not in READABLE_SCHEMA_VERSIONS:  # refused, with the shared message
        require_schema_version(content, CHECKPOINT_SCHEMA_VERSION, what="checkpoint", source=str(path),
                               advice="(Version 1 is read too.) Use the nnsam3d version that wrote it, or train again.", error=CheckpointFormatError)
    return ModelCheckpoint(
        trainer_name=content["trainer_name"],
        fold=content["fold"],
        epoch=int(content["epoch"]),
        plans=content["plans"],
        dataset_json=content["dataset_json"],
        network_weights=content["network_weights"],
        training_state=content.get("training_state") or {},
        sam_source=content.get("sam_source"),
    )
