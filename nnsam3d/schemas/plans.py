"""The plans: what the planner decided, as typed data serialised to readable JSON.

``nnsam3d_plans.json`` is the hand-over from planning to preprocessing, training and
inference. Every stage after the planner reads it through :class:`Plans`, never a raw dict.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.io.schema_version import require_schema_version
from nnsam3d.model.config import NetworkConfig

PLANS_SCHEMA_VERSION = 1
DEFAULT_PLANS_NAME = "nnsam3d_plans"

ANISOTROPY_THRESHOLD = 3.0
"""An axis whose spacing exceeds this many times the finest is anisotropic (nnU-Net's rule)."""


def anisotropic_axis(spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis whose spacing exceeds ``threshold`` times the finest spacing, if exactly one does.

    Defined here, with the plans, because :attr:`Plans.anisotropic_axis` derives from it;
    resampling applies the same rule per case (``preprocessing.resampling``).
    """
    spacing = np.asarray(spacing, dtype=float)
    coarse = np.flatnonzero(spacing / spacing.min() > threshold)
    return int(coarse[0]) if len(coarse) == 1 else None


NORMALIZATION_SCHEMES = (
    "CTNormalization",
    "ZScoreNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
)


@dataclass
class ChannelNormalization:
    """How one input channel is normalised.

    CTNormalization: clip to [lower_bound, upper_bound] (foreground 0.5/99.5 percentiles),
        then (x - mean) / std with the dataset's foreground statistics.
    ZScoreNormalization: per-image (x - mean) / std, inside the non-zero mask when
        ``use_nonzero_mask`` (cropping to non-zero removed much of the image).
    NoNormalization: unchanged.  RescaleTo01Normalization: per-image min/max to [0, 1].
    """

    channel: int
    modality: str
    scheme: str
    use_nonzero_mask: bool = False
    mean: float | None = None
    std: float | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in NORMALIZATION_SCHEMES:
            raise ValueError(f"normalisation scheme must be one of {NORMALIZATION_SCHEMES}, got '{self.scheme}'")


@dataclass
class MemoryBudget:
    """The GPU memory the plan was made for and the network memory model's estimate for it.

    target_bytes: the budget. source: where it came from ("--gpu-memory-gb", "visible GPU ...",
    "default"). estimate_bytes: estimated peak training memory of the chosen configuration.
    breakdown: the estimate's parts in bytes (parameters, gradients, optimizer, activations, ...).
    precision: "bf16", "fp16" or "fp32", the training precision the estimate assumes.
    """

    target_bytes: int
    estimate_bytes: int
    precision: str
    source: str = "default"
    breakdown: dict[str, int] = field(default_factory=dict)


@dataclass
class ComputeBudget:
    """What one training step of the plan costs, and the compute target it was planned within.

    flops_per_step: FLOPs of one training step (forward + backward) at the plan's batch size.
    forward_flops: of which forward (what a pseudo-Dice batch costs).
    epoch_seconds, fold_hours: estimated time per epoch and per fold of the default schedule on
        ``reference_gpu`` (the GPU model planned for, or the reference GPU) at ``sustained_tflops``.
    target_fold_hours, source: the target (``--compute-budget`` or the default) and its origin.
    breakdown: FLOPs per step by part (attention, encoder_linear, decoder, ...).
    throughput_source: where ``sustained_tflops`` comes from: measured on ``reference_gpu``'s
        model, or assumed (``model.gpu_throughput``); empty in plans written before it was recorded.
    """

    flops_per_step: float
    forward_flops: float
    epoch_seconds: float
    fold_hours: float
    target_fold_hours: float
    reference_gpu: str
    sustained_tflops: float
    source: str = "default"
    breakdown: dict[str, float] = field(default_factory=dict)
    throughput_source: str = ""


@dataclass
class Plans:
    """Everything later stages need to preprocess, train and predict like the planner intended.

    target_spacing: voxel size (mm) along canonical (z, y, x) after resampling.
    anisotropic_axis (derived from target_spacing): the axis whose target spacing is more than
        3x the finest, or None. Augmentation keeps it out of its spatial transforms (in-plane only).
        Preprocessing does not read it: it picks the axis to resample separately per case, from
        the case's own spacing and the target (``preprocessing.resampling.separate_axis_for``).
    normalization: one entry per input channel.
    median_shape: median case shape (voxels, z, y, x) after cropping and resampling.
    network: the 3DMedSAM configuration (patch size, backbone, token size, window, adapters...).
        The file also records its ``window_padding_ratio`` (derived, not read back): tokens a
        window block processes per real token.
    batch_size: patches per training step (at least 2).
    foreground_oversampling: share of each batch centred on foreground.
    memory: the budget and the estimate behind the choice.
    compute: FLOPs per step, estimated epoch time and the compute target (None in plans written
        before it existed).
    explanation: the paragraph the planner printed.
    pretrained_weights: the pre-trained file the planner found for the backbone, told by its
        SHA-256 (``known_checkpoints.CheckpointIdentity.to_json``: Meta's SAM, MedSAM ViT-B,
        LiteMedSAM or another SAM-format file); None for a backbone trained from scratch or a
        file not found at planning time (training names it again in its log and checkpoint).
    """

    dataset_name: str
    target_spacing: tuple[float, float, float]
    normalization: list[ChannelNormalization]
    median_shape: tuple[int, int, int]
    network: NetworkConfig
    batch_size: int
    memory: MemoryBudget
    plans_name: str = DEFAULT_PLANS_NAME
    image_resampling_order: int = 3
    foreground_oversampling: float = 0.33
    compute: ComputeBudget | None = None
    explanation: str = ""
    pretrained_weights: dict | None = None
    schema_version: int = PLANS_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.target_spacing = tuple(float(v) for v in self.target_spacing)
        self.median_shape = tuple(int(v) for v in self.median_shape)

    @property
    def anisotropic_axis(self) -> int | None:
        return anisotropic_axis(self.target_spacing)

    @property
    def data_identifier(self) -> str:
        """Name of the preprocessed data folder for these plans."""
        return f"{self.plans_name}_3d"

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.network.patch_size

    @property
    def backbone(self) -> str:
        return self.network.backbone

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_name,
            "data_identifier": self.data_identifier,
            "target_spacing": list(self.target_spacing),
            "anisotropic_axis": self.anisotropic_axis,
            "image_resampling_order": self.image_resampling_order,
            "median_shape": list(self.median_shape),
            "normalization": [asdict(n) for n in self.normalization],
            "patch_size": list(self.network.patch_size),
            "batch_size": self.batch_size,
            "backbone": self.network.backbone,
            "foreground_oversampling": self.foreground_oversampling,
            "network": self.network.to_json(),
            "window_padding_ratio": round(self.network.window_padding_ratio, 4),
            "memory": asdict(self.memory),
            "compute": None if self.compute is None else asdict(self.compute),
            "explanation": self.explanation,
            "pretrained_weights": self.pretrained_weights,
        }

    @classmethod
    def from_json(cls, content: dict, source: str = "plans") -> "Plans":
        version = require_schema_version(content, PLANS_SCHEMA_VERSION, what="plans", source=source,
                                         advice="Rerun nnsam3d_plan_and_preprocess.")
        try:
            return cls(
                dataset_name=content["dataset_name"],
                plans_name=content.get("plans_name", DEFAULT_PLANS_NAME),
                # "anisotropic_axis" and "window_padding_ratio" are written for readers of the file
                # but derived (from the spacing and the network), so not read back
                target_spacing=tuple(content["target_spacing"]),
                image_resampling_order=int(content.get("image_resampling_order", 3)),
                median_shape=tuple(content["median_shape"]),
                normalization=[ChannelNormalization(**n) for n in content["normalization"]],
                network=NetworkConfig.from_json(content["network"]),
                batch_size=int(content["batch_size"]),
                foreground_oversampling=float(content.get("foreground_oversampling", 0.33)),
                memory=MemoryBudget(**content["memory"]),
                compute=ComputeBudget(**content["compute"]) if content.get("compute") else None,
                explanation=content.get("explanation", ""),
                pretrained_weights=content.get("pretrained_weights"),
                schema_version=version,
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: malformed plans ({type(error).__name__}: {error}).") from error

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plans":
        path = Path(path)
        if not path.is_file():
            present = plans_names_in(path.parent)
            raise FileNotFoundError(
                f"{path}: plans not found. "
                + (f"Plans of this dataset: {', '.join(present)} (choose one with -p)."
                   if present else "Run nnsam3d_plan_and_preprocess for this dataset first.")
            )
        return cls.from_json(read_json(path), source=str(path))


def plans_names_in(folder: str | os.PathLike) -> list[str]:
    """Names of the plans files in a preprocessed dataset folder (JSON files that are plans)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = []
    for candidate in sorted(folder.glob("*.json")):
        try:
            content = read_json(candidate)
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and "network" in content and "target_spacing" in content:
            names.append(candidate.stem)
    return names
