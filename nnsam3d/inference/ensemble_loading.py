"""The checkpoints of one or several model folders → networks that can be averaged.

Every fold of every folder becomes one network; they must have been trained on the same
preprocessing, patch size, labels and channels, or averaging their scores means nothing.

Folds rebuilt from one SAM file (slim checkpoints of a frozen encoder) share its frozen tensors
in memory (``model.trained_weights.share_frozen_tensors``): one encoder, not one per fold, while
each fold keeps its own trained tensors. While loading, one fold's own copy exists beside the
shared one until it is swapped out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import nn

from nnsam3d import paths
from nnsam3d.inference.model_folders import fold_checkpoints
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.sam_checkpoints import SamSource
from nnsam3d.model.trained_weights import rebuild_trained_network, share_frozen_tensors
from nnsam3d.schemas.plans import Plans


class IncompatibleModelsError(ValueError):
    """Checkpoints that cannot be ensembled (different preprocessing or labels)."""


def _preprocessing_signature(plans: Plans) -> dict:
    """The parts of the plans that decide what the network sees; ensembled models must agree."""
    content = plans.to_json()
    return {key: content[key] for key in ("target_spacing", "anisotropic_axis", "image_resampling_order",
                                          "normalization", "patch_size")}


@dataclass
class LoadedEnsemble:
    """networks: one per checkpoint, deep supervision off; plans and description: the first
    checkpoint's (the others agree); checkpoint_files: where each network came from;
    shared_bytes: bytes of frozen tensors not held twice because folds share them."""

    networks: list[nn.Module]
    plans: Plans
    description: DatasetDescription
    checkpoint_files: list[Path]
    shared_bytes: int = 0


def load_ensemble(
    model_dirs: Sequence[str | os.PathLike],
    folds: Sequence[int | str] | None,
    checkpoint_name: str,
    sam_checkpoint: str | os.PathLike | None = None,
) -> LoadedEnsemble:
    """The folds of every folder (see ``model_folders.fold_checkpoints``); slim checkpoints
    rebuild their frozen SAM encoder from ``sam_checkpoint`` or the SAM checkpoint folder.
    Raises ``IncompatibleModelsError`` naming two checkpoints that disagree."""
    checkpoint_files = [path for folder in model_dirs for path in fold_checkpoints(folder, folds, checkpoint_name)]
    networks, plans, description, reference = [], None, None, None
    first_of_source: dict = {}  # SAM file's SHA-256 → the first network rebuilt from it (its frozen tensors are shared)
    shared_bytes = 0
    for path in checkpoint_files:
        checkpoint = load_checkpoint(path, map_location="cpu")
        checkpoint_plans = Plans.from_json(checkpoint.plans, source=str(path))
        checkpoint_description = DatasetDescription.from_json(checkpoint.dataset_json, source=f"{path} (dataset.json)")
        if plans is None:
            plans, description, reference = checkpoint_plans, checkpoint_description, path
        elif _preprocessing_signature(checkpoint_plans) != _preprocessing_signature(plans) or (
            checkpoint_description.labels != description.labels
            or checkpoint_description.channel_names != description.channel_names
        ):
            raise IncompatibleModelsError(
                f"{path} and {reference} were trained with different preprocessing, patch size or labels "
                f"and cannot be ensembled; predict with them separately."
            )
        network = rebuild_trained_network(
            checkpoint_plans.network.replace(deep_supervision=False), checkpoint.network_weights,
            SamSource.from_json(checkpoint.sam_source), source=str(path), sam_checkpoint=sam_checkpoint,
            search_dirs=(paths.sam_checkpoint_dir(),),
        )
        del checkpoint
        if network.sam_source is not None:
            shared_bytes += share_frozen_tensors(network, first_of_source.setdefault(network.sam_source.sha256, network))
        networks.append(network)
    return LoadedEnsemble(networks, plans, description, checkpoint_files, shared_bytes)
