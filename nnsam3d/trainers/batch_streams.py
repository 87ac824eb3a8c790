"""The two batch streams of a fold: augmented training patches and pseudo-Dice patches.

Each rank of a distributed run gets its share of the global batch (and of its
foreground-centred patches); worker seeds differ per rank and per epoch at which the streams
start, so that a resumed run does not replay the batches of its first epochs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from nnsam3d.trainers.augmentation import (
    AugmentationSettings,
    spatial_transform,
    training_transforms,
    validation_transforms,
)
from nnsam3d.trainers.data_loading import (
    PatchDataLoader,
    foreground_samples_per_batch,
    start_batch_stream,
    stop_batch_stream,
)
from nnsam3d.trainers.distributed import DistributedContext, split_batch


MAX_DEFAULT_WORKERS = 12
"""nnU-Net's default number of augmentation processes per GPU. One batch of the 24 GiB vit_b plan
(2 x 124 x 384 x 384, in-plane rotation around it) costs about 2.3 s of one CPU core
(benchmarks/results/augmentation_speed_cpu.json): 12 processes supply a batch every 0.19 s,
against a 1.0 s step on an H200 and 0.33 s at the 250 TFLOP/s that issue 24 aims at."""


def default_num_workers(context: DistributedContext) -> int:
    """0 on the CPU (the model and the augmentation share the same cores anyway); on a GPU,
    enough processes per rank that augmentation keeps up with the model: every core but one
    per rank, at most ``MAX_DEFAULT_WORKERS``."""
    if context.device.type != "cuda":
        return 0
    cores = os.cpu_count() or 2
    return max(1, min(MAX_DEFAULT_WORKERS, cores // context.world_size - 1))


def training_loader(folder: Path, cases: Sequence[str], batch_size: int, settings: AugmentationSettings,
                    foreground_samples: int, ignore_label: int | None = None) -> PatchDataLoader:
    """The loader of augmented training patches: it runs ``settings``' spatial transform while
    reading; ``training_transforms(settings)`` does the rest."""
    return PatchDataLoader(folder, cases, batch_size, settings.patch_size, foreground_samples,
                           ignore_label=ignore_label, spatial=spatial_transform(settings))


@dataclass
class FoldStreams:
    train: Iterator[dict]
    validation: Iterator[dict]
    description: str
    """One line for the log: cases, patch, batch split, oversampling, augmentation, workers."""

    def stop(self) -> None:
        for stream in (self.train, self.validation):
            stop_batch_stream(stream)


def start_fold_streams(
    folder: Path,
    train_cases: Sequence[str],
    validation_cases: Sequence[str],
    batch_size: int,
    foreground_oversampling: float,
    settings: AugmentationSettings,
    num_workers: int,
    context: DistributedContext,
    seed: int,
    ignore_label: int | None = None,
) -> FoldStreams:
    """Start both streams for this rank. ``batch_size`` is the global batch of the plans;
    ``num_workers`` augmentation processes for training (half as many for pseudo-Dice);
    ``ignore_label``: never a class to centre foreground patches on."""
    global_foreground = foreground_samples_per_batch(batch_size, foreground_oversampling)
    batch, foreground = split_batch(batch_size, global_foreground, context.world_size, context.rank)
    train_loader = training_loader(folder, train_cases, batch, settings, foreground, ignore_label)
    val_loader = PatchDataLoader(folder, validation_cases, batch, settings.patch_size, foreground,
                                 ignore_label=ignore_label)
    pin = context.device.type == "cuda"
    train = start_batch_stream(train_loader, training_transforms(settings), num_workers, seed, pin)
    validation = start_batch_stream(
        val_loader, validation_transforms(), max(1, num_workers // 2) if num_workers else 0, seed + 1, pin
    )
    per_process = f" ({batch} per process x {context.world_size})" if context.is_distributed else ""
    augmentation = (
        f"in-plane (thin axis {settings.thin_axis})" if settings.thin_axis is not None else "3D"
    )
    description = (
        f"{len(train_cases)} training / {len(validation_cases)} validation cases; patch {settings.patch_size}, "
        f"batch {batch_size}{per_process} with {global_foreground} foreground-centred patch(es); "
        f"augmentation {augmentation}; {num_workers} augmentation worker(s)"
    )
    return FoldStreams(train, validation, description)
