"""Training checkpoints: ``checkpoint_latest/best/final.pth`` through ``io.checkpoint_file``.

A checkpoint holds the network weights, the plans (with the network configuration the trainer
actually built) and dataset.json, so the predictor needs nothing else; and the training state
(optimiser, schedule, scaler, epoch, random generators, log history) so that ``--c`` resumes
exactly.

Slim: a network whose SAM encoder stays frozen stores only the tensors training changes plus the
SAM file's name and SHA-256 (``model.trained_weights``); vit_b with adapters, 22 MB instead of
375 MB. ``checkpoint_final.pth`` is the model a fold delivers: it leaves out the optimiser's
moments (twice the trainable weights), which only resuming needs and ``checkpoint_latest.pth``
(written with it at the end) and ``checkpoint_best.pth`` keep. Everything is converted to what ``torch.load(weights_only=True)`` accepts: numpy's and
Python's generator states become lists of ints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnsam3d.io.checkpoint_file import ModelCheckpoint, load_checkpoint, save_checkpoint
from nnsam3d import paths
from nnsam3d.model.sam_checkpoints import SamSource
from nnsam3d.model.trained_weights import rebuild_trained_network, trained_state_dict
from nnsam3d.trainers.request import TrainingInputError

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
FINAL = "checkpoint_final.pth"
RESUME_STATE_KEY = "optimization"
"""The part of the training state only resuming needs (optimiser moments, schedule, scaler)."""


def seed_generators(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def write_training_checkpoint(path: str | Path, *, trainer_name: str, fold: str, epoch: int, plans: dict,
                              dataset_json: dict, network: nn.Module, training_state: dict) -> None:
    """Write atomically (a crash mid-write leaves the previous file as it was). ``network`` is the
    bare module, not its DistributedDataParallel wrapper, so that keys carry no ``module.``.
    Only the tensors training changes are stored when the rest is SAM's (see the module)."""
    weights, sam_source = trained_state_dict(network)
    save_checkpoint(
        ModelCheckpoint(
            trainer_name=trainer_name,
            fold=fold,
            epoch=epoch,
            plans=plans,
            dataset_json=dataset_json,
            network_weights=weights,
            training_state=training_state,
            sam_source=None if sam_source is None else sam_source.to_json(),
        ),
        path,
    )


@dataclass
class ResumePoint:
    """The checkpoint a run continues from (``--c``) or validates (``--val``), and its file."""

    path: Path
    checkpoint: ModelCheckpoint

    @property
    def state(self) -> dict:
        """The trainer-owned training state saved with it."""
        return self.checkpoint.training_state

    def rebuild_network(self, config, sam_checkpoint: str | None = None) -> nn.Module:
        """The network saved here, built from ``config`` (a slim checkpoint's frozen SAM encoder
        from its SAM file: ``sam_checkpoint``, else looked up by name and SHA-256)."""
        return rebuild_trained_network(
            config, self.checkpoint.network_weights, SamSource.from_json(self.checkpoint.sam_source),
            source=str(self.path), sam_checkpoint=sam_checkpoint, search_dirs=(paths.sam_checkpoint_dir(),),
        )

    def release_tensors(self) -> None:
        """Free the weights and optimiser state once the network and optimiser hold them."""
        self.checkpoint.network_weights = {}
        self.checkpoint.training_state = {}


def model_only(training_state: dict) -> dict:
    """The training state without what only resuming needs (what ``checkpoint_final.pth`` keeps)."""
    return {key: value for key, value in training_state.items() if key != RESUME_STATE_KEY}


def find_resume_point(fold_folder: str | Path, *, validation_only: bool, continue_training: bool) -> ResumePoint | None:
    """``--val``: the final checkpoint, which must exist. ``--c``: the checkpoint with the most epochs
    among those that carry the optimiser state, whatever their name (final, latest or best: a run
    killed before its first ``checkpoint_latest.pth`` may have left only ``checkpoint_best.pth``);
    None when the fold has none yet. Otherwise None (a new run). A final checkpoint without the
    optimiser state (see the module) is a model, not a resume point.
    """
    fold_folder = Path(fold_folder)
    if validation_only:
        path = fold_folder / FINAL
        if not path.is_file():
            raise TrainingInputError(
                f"{path}: not found. --val validates a finished training; train this fold first "
                f"(or finish it with --c)."
            )
        return ResumePoint(path, load_checkpoint(path))
    if not continue_training:
        return None
    # Memory-mapped: only the chosen checkpoint's tensors are ever read from disk.
    found = [ResumePoint(fold_folder / name, load_checkpoint(fold_folder / name, mmap=True))
             for name in (FINAL, LATEST, BEST) if (fold_folder / name).is_file()]
    resumable = [point for point in found if RESUME_STATE_KEY in point.state]
    if found and not resumable:
        raise TrainingInputError(
            f"{found[0].path}: holds the trained model but not the optimiser state needed to resume "
            f"({LATEST} carries it and is missing). Train this fold again without --c, or restore {LATEST}."
        )
    # max() keeps the first of equals: on equal epochs final wins, it is what the finished run left.
    return max(resumable, key=lambda point: point.checkpoint.epoch, default=None)
