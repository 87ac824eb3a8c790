"""The default trainer: frozen SAM encoder + 3D adapters, 5-fold cross-validation, one fold per run.

The trainer orchestrates; the work lives in its own modules: inputs (``request``), splits
(``splits``), patches and their worker streams (``data_loading``, ``batch_streams``),
augmentation (``augmentation``), losses (``losses``), optimiser, schedule and precision
(``optimization``), checkpoints and where a run resumes (``checkpointing``), log and curves
(``training_log``), pseudo-Dice (``pseudo_dice``), final validation (``validation``) and
data parallelism (``distributed``).

Variants (``variants.py``) subclass it and override a hook or two: ``pretrained_checkpoint``,
``configure_network``, ``peak_learning_rate``, ``build_loss``, ``augmentation_settings``, or a
class attribute such as ``num_epochs``.

Default schedule: 250 epochs of 250 iterations (62,500 steps), a quarter of nnU-Net's
1000 x 250. nnU-Net's own 250-epoch variant already comes close to the full schedule when
training a U-Net from scratch; here SAM's encoder arrives trained and only the adapters, the 3D
embeddings and the decoder learn (a few percent of the parameters), which settles much faster.
The same schedule is used for every variant so that the ablations compare like with like.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nnsam3d import paths
from nnsam3d.io.checkpoint_file import ModelCheckpoint
from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network, compile_network, count_parameters, use_channels_last_decoder
from nnsam3d.model.known_checkpoints import identify
from nnsam3d.model.sam_checkpoints import resolve_sam_checkpoint
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers import checkpointing
from nnsam3d.trainers.augmentation import AugmentationSettings, settings_for
from nnsam3d.trainers.batch_streams import FoldStreams, default_num_workers, start_fold_streams
from nnsam3d.trainers.distributed import DistributedContext
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss, NetworkLoss, full_resolution
from nnsam3d.trainers.optimization import (
    DEFAULT_GRADIENT_CLIP_NORM,
    Optimization,
    WarmupDecaySchedule,
    build_optimizer,
    precision_for,
)
from nnsam3d.trainers.pseudo_dice import MovingAverage, confusion_counts, dice_from_counts, nan_mean
from nnsam3d.trainers.request import TrainingInputError, TrainingInputs, TrainingRequest
from nnsam3d.trainers.splits import fold_of_run
from nnsam3d.trainers.time_budget import TimeBudget
from nnsam3d.trainers.training_log import EpochRecord, TrainingLog
from nnsam3d.trainers.validation import SUMMARY_FILENAME, VALIDATION_FOLDER, validate_cases

DEEP_SUPERVISION_OUTPUTS = 3  # full, 1/2, 1/4 resolution (MedSAM3D's decoder heads)
LOSS_DISPLAY_EVERY = 10  # iterations between progress-bar loss updates, each of which syncs with the GPU


class nnSAM3DTrainer:
    """Trains 3DMedSAM on one fold: SAM's encoder frozen, adapters + 3D embeddings + decoder learn.

    Construction only reads the plans and dataset description and finds the SAM checkpoint, so
    mistakes surface before anything is written; ``run()`` does the work.
    """

    num_epochs: int = 250
    iterations_per_epoch: int = 250
    validation_iterations: int | None = None
    """Pseudo-Dice batches per epoch; None: a fifth of the training iterations (nnU-Net's 50 per 250)."""
    lr_with_sam: float = 5e-4
    """Peak AdamW learning rate when starting from SAM's weights (adapters and decoder)."""
    lr_from_scratch: float = 1e-3
    """Peak learning rate when every weight starts random (vit_tiny, the fromScratch variant)."""
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    lr_schedule: str = "poly"
    gradient_clip_norm: float | None = DEFAULT_GRADIENT_CLIP_NORM
    checkpoint_every: int = 5
    checkpoint_minutes: float = 3.0
    """``checkpoint_latest.pth`` is also written after the first epoch ending this many minutes after
    the last one, so that a killed run loses at most this much plus one epoch."""
    pseudo_dice_ema_factor: float = 0.9
    elastic_deformation: bool = False

    def __init__(self, request: TrainingRequest, context: DistributedContext | None = None):
        self.request = request
        self.context = context or DistributedContext()
        self.name = type(self).__name__
        if request.num_epochs is not None:
            self.num_epochs = int(request.num_epochs)
        if request.iterations_per_epoch is not None:
            self.iterations_per_epoch = int(request.iterations_per_epoch)
        if self.num_epochs < 1 or self.iterations_per_epoch < 1:
            raise TrainingInputError("--epochs and --iterations-per-epoch must be at least 1.")

        inputs = TrainingInputs.locate(request)
        self.dataset_name, self.preprocessed_dir = inputs.dataset_name, inputs.preprocessed_dir
        self.plans, self.description = inputs.plans, inputs.description
        self.store, self.case_ids = inputs.store, inputs.case_ids
        self.output_folder = paths.fold_dir(self.dataset_name, self.name, request.plans_name, request.fold)
        self.resume_from = checkpointing.find_resume_point(
            self.output_folder, validation_only=request.validation_only, continue_training=request.continue_training
        )
        if self.resume_from is None:
            self.pretrained_path = self.pretrained_checkpoint()
            self._from_sam = self.pretrained_path is not None
        else:
            # Resuming and --val load every weight from the checkpoint, which remembers whether the
            # run started from SAM, and keep the run's own schedule unless the command line changes it.
            state = self.resume_from.state
            self.pretrained_path = None
            self._from_sam = bool(state.get("started_from_sam", False))
            if request.num_epochs is None and "num_epochs" in state:
                self.num_epochs = int(state["num_epochs"])
            if request.iterations_per_epoch is None and "iterations_per_epoch" in state:
                self.iterations_per_epoch = int(state["iterations_per_epoch"])
        self.log = TrainingLog(self.output_folder, enabled=self.context.is_main)
        self.iteration_losses: list[float] = []
        self.streams: FoldStreams | None = None

    # ----------------------------------------------------------------------------- hooks
    def pretrained_checkpoint(self) -> Path | None:
        """The SAM-format file to start from, None to start from random weights.

        ``--sam-checkpoint``, else the official file of the plan's backbone in the SAM checkpoint
        folder (``nnSAM3D_sam_checkpoints``); a missing file raises the resolver's error, which
        says how to get one or to choose ``nnSAM3DTrainer_fromScratch``. Backbones without an
        official checkpoint (vit_tiny) train from scratch unless a file is given.
        """
        explicit = self.request.sam_checkpoint
        if explicit is None and not get_backbone(self.plans.backbone).has_official_checkpoint:
            return None
        return resolve_sam_checkpoint(
            self.plans.backbone, explicit_path=explicit, search_dirs=(paths.sam_checkpoint_dir(),), download=False
        )

    @property
    def starts_from_sam(self) -> bool:
        """Whether the run started from SAM's weights (also true when resuming such a run)."""
        return self._from_sam

    def configure_network(self, config: NetworkConfig) -> NetworkConfig:
        """The network this trainer trains, from the plans' configuration.

        Default: deep supervision on; SAM's encoder frozen with adapters when SAM weights are
        loaded; everything trains when starting from random weights (a frozen random encoder
        would learn nothing).
        """
        return config.replace(deep_supervision=True, trainable="adapters" if self.starts_from_sam else "full")

    def peak_learning_rate(self) -> float:
        return self.lr_with_sam if self.starts_from_sam else self.lr_from_scratch

    def build_loss(self) -> nn.Module:
        return DeepSupervisionLoss(DiceCrossEntropyLoss(ignore_label=self.description.ignore_label),
                                   DEEP_SUPERVISION_OUTPUTS)

    def augmentation_settings(self) -> AugmentationSettings:
        return settings_for(
            self.plans.patch_size, self.plans.target_spacing, self.plans.anisotropic_axis, self.elastic_deformation
        )

    # ----------------------------------------------------------------------------- derived
    @property
    def pseudo_dice_iterations(self) -> int:
        if self.validation_iterations is not None:
            return self.validation_iterations
        return max(1, self.iterations_per_epoch // 5)

    @property
    def class_names(self) -> list[str]:
        return [self.description.label_name(k) for k in range(1, self.description.num_classes)]

    # ----------------------------------------------------------------------------- setup
    def initialize(self) -> None:
        """Build network, optimiser, loss and data streams; load the checkpoint when resuming."""
        ctx = self.context
        if self.resume_from is not None:
            self.plans = Plans.from_json(self.resume_from.checkpoint.plans, source=str(self.resume_from.path))
            config = self.plans.network
        else:
            config = self.configure_network(self.plans.network)
            self.plans = dataclasses.replace(self.plans, network=config)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick its fastest kernels
        torch.manual_seed(self.request.seed)  # identical initial weights on every rank
        if self.resume_from is None:
            network = build_network(config, self.pretrained_path)
        else:
            network = self.resume_from.rebuild_network(config, self.request.sam_checkpoint)
        self.network_module = network.to(ctx.device)
        if self.request.channels_last:
            use_channels_last_decoder(network)
        self.network = ctx.wrap(self.training_forward_module())
        self.loss = self.build_loss()
        self.network_loss = NetworkLoss(self.network, self.loss)
        if self.request.compile:  # the training step's forward as one graph; validation's own
            self.network_loss = compile_network(self.network_loss, self.request.compile_mode)
            self.network = compile_network(self.network, self.request.compile_mode)

        self.epochs_completed = 0
        self.pseudo_dice_ema = MovingAverage(self.pseudo_dice_ema_factor)
        self.best_ema = -math.inf
        if self.request.validation_only:
            self._choose_fold_cases()
            self.resume_from.release_tensors()
            return

        total_steps = self.num_epochs * self.iterations_per_epoch
        optimizer = build_optimizer(self.network_module, self.peak_learning_rate(), self.weight_decay)
        schedule = WarmupDecaySchedule(
            optimizer, self.peak_learning_rate(), total_steps, self.warmup_fraction, self.lr_schedule
        )
        self.optimization = Optimization(optimizer, schedule, precision_for(ctx.device), self.gradient_clip_norm)
        checkpointing.seed_generators(self.request.seed + 1000 * ctx.rank)
        if self.resume_from is not None:
            self._load_training_state(self.resume_from.checkpoint)
            self.resume_from.release_tensors()
        self._choose_fold_cases()
        self._start_streams()

    def _load_training_state(self, checkpoint: ModelCheckpoint) -> None:
        state = checkpoint.training_state
        self.epochs_completed = checkpoint.epoch
        self.optimization.load_state_dict(state["optimization"])
        self.log.load_state_dict(state["log"])
        self.pseudo_dice_ema.value = state.get("pseudo_dice_ema")
        self.best_ema = float(state.get("best_pseudo_dice_ema", -math.inf))
        rng = state.get("rng", {}).get(str(self.context.rank))
        if rng is not None:
            checkpointing.restore_rng_state(rng)

    def _choose_fold_cases(self) -> None:
        self.fold = fold_of_run(self.context, self.preprocessed_dir, self.dataset_name, self.case_ids,
                                self.request.fold, self.request.splits_file, self.log.message)

    def _start_streams(self) -> None:
        ctx = self.context
        workers = self.request.num_workers if self.request.num_workers is not None else default_num_workers(ctx)
        self.streams = start_fold_streams(
            self.store.folder, self.fold.train, self.fold.val, self.plans.batch_size,
            self.plans.foreground_oversampling, self.augmentation_settings(), workers, ctx,
            ignore_label=self.description.ignore_label,
            seed=self.request.seed + 7919 * ctx.rank + 104729 * self.epochs_completed,
        )
        self.train_stream, self.val_stream = self.streams.train, self.streams.validation
        self.log.message(f"{self.name}, fold {self.fold.fold}: {self.streams.description}")
        source = getattr(self.network_module, "sam_source", None)
        if source is not None:
            identity = identify(source.file_name, source.sha256, self.plans.backbone)
            self.log.message(f"frozen encoder weights: {identity.description}, SHA-256 {identity.sha256}")

    def _stop_streams(self) -> None:
        if self.streams is not None:
            self.streams.stop()
            self.streams = None

    # ----------------------------------------------------------------------------- steps
    def training_forward_module(self) -> nn.Module:
        """What ``self.network`` calls (and DistributedDataParallel wraps): the network itself here;
        a variant whose training step is more than one forward pass wraps it in a module whose
        ``forward`` does the whole step, so that data-parallel training sees a single forward."""
        return self.network_module

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.context.device
        non_blocking = device.type == "cuda"
        return (
            batch["data"].to(device, non_blocking=non_blocking),
            batch["target"].to(device, non_blocking=non_blocking),
        )

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimiser step; returns the detached loss, still on the device (reading it would
        make the host wait for the GPU every step)."""
        data, target = self._to_device(batch)
        with self.optimization.precision.autocast():
            loss = self.network_loss(data, target)
        self.optimization.step(loss)
        return loss.detach()

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, torch.Tensor]:
        data, target = self._to_device(batch)
        with self.optimization.precision.autocast():
            outputs = self.network(data)
            loss = self.loss(outputs, target)
        return float(loss), confusion_counts(full_resolution(outputs), target, self.description.ignore_label)

    def run_epoch(self, epoch: int) -> EpochRecord:
        """Train ``iterations_per_epoch`` steps and estimate pseudo-Dice; ``epoch`` is 0-based."""
        started = time.perf_counter()
        learning_rate = self.optimization.schedule.current  # at the epoch's start, as nnU-Net logs it
        self.network.train()
        losses = []
        bar = tqdm(range(self.iterations_per_epoch), desc=f"epoch {epoch + 1}/{self.num_epochs}",
                   disable=not self.context.is_main, leave=False, mininterval=1.0, unit="it")
        for iteration in bar:
            losses.append(self.train_step(next(self.train_stream)))
            if iteration % LOSS_DISPLAY_EVERY == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}", refresh=False)
        losses = torch.stack(losses).float().tolist()
        self.iteration_losses.extend(losses)

        self.network.eval()
        val_losses, counts = [], None
        for _ in range(self.pseudo_dice_iterations):
            loss, batch_counts = self.validation_step(next(self.val_stream))
            val_losses.append(loss)
            counts = batch_counts if counts is None else counts + batch_counts
        dice = dice_from_counts(self.context.sum(counts)) if counts is not None else [math.nan] * len(self.class_names)
        ema = self.pseudo_dice_ema.update(nan_mean(dice))
        return EpochRecord(
            epoch=epoch + 1,
            train_loss=self.context.mean(float(np.mean(losses))),
            val_loss=self.context.mean(float(np.mean(val_losses))) if val_losses else math.nan,
            pseudo_dice=dice,
            pseudo_dice_ema=ema,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - started,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict:
        return {
            "optimization": self.optimization.state_dict(),
            "log": self.log.state_dict(),
            "pseudo_dice_ema": self.pseudo_dice_ema.value,
            "best_pseudo_dice_ema": self.best_ema,
            "rng": self.context.gather_by_rank(checkpointing.capture_rng_state()),
            "seed": self.request.seed,
            "started_from_sam": self.starts_from_sam,
            "peak_learning_rate": self.peak_learning_rate(),
            "num_epochs": self.num_epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
        }

    def save_checkpoint(self, filename: str) -> None:
        """Every rank takes part (the random-generator states are gathered); rank 0 writes.
        ``checkpoint_final.pth`` is the model: without the optimiser state only resuming needs."""
        state = self.training_state()
        if filename == checkpointing.FINAL:
            state = checkpointing.model_only(state)
        if self.context.is_main:
            checkpointing.write_training_checkpoint(
                self.output_folder / filename,
                trainer_name=self.name,
                fold=self.request.fold,
                epoch=self.epochs_completed,
                plans=self.plans.to_json(),
                dataset_json=self.description.to_json(),
                network=self.network_module,
                training_state=state,
            )

    # ----------------------------------------------------------------------------- run
    def run(self) -> None:
        """Train (or resume) the fold, then validate it; with ``validation_only``, just validate."""
        self.initialize()
        if self.request.validation_only:
            self.validate()
            return
        try:
            finished_before = self.epochs_completed >= self.num_epochs
            if finished_before:
                self.log.message(
                    f"{self.output_folder}: already trained for {self.epochs_completed} epochs; nothing to train "
                    f"(give a larger --epochs to extend it)."
                )
            else:
                self.train()
        finally:
            self._stop_streams()
        summary = self.output_folder / VALIDATION_FOLDER / SUMMARY_FILENAME
        if not (finished_before and summary.is_file()):
            self.validate()

    def train(self) -> None:
        ctx = self.context
        counts = count_parameters(self.network_module)
        source = f"SAM weights ({self.pretrained_path})" if self.starts_from_sam else "random weights"
        if self.resume_from is not None:
            source = f"{self.resume_from.path.name} (epoch {self.epochs_completed})"
        elif self.request.continue_training:
            self.log.message(f"--c: no checkpoint in {self.output_folder}; starting a new training")
        self.log.message(
            f"training {self.dataset_name} fold {self.request.fold} with {self.name} on {ctx.device} "
            f"x {ctx.world_size} ({self.optimization.precision.name}); {self.plans.backbone} from {source}; "
            f"trainable '{self.plans.network.trainable}': {counts}; {self.num_epochs} epochs x "
            f"{self.iterations_per_epoch} iterations, peak lr {self.peak_learning_rate():.1e}"
        )
        budget = TimeBudget(self.request.time_budget_minutes, ctx)
        latest_written = time.monotonic()
        for epoch in range(self.epochs_completed, self.num_epochs):
            record = self.run_epoch(epoch)
            self.epochs_completed = epoch + 1
            self.log.record_epoch(record, self.num_epochs, self.class_names, budget.seconds_left())
            if not math.isnan(record.pseudo_dice_ema) and record.pseudo_dice_ema > self.best_ema:
                self.best_ema = record.pseudo_dice_ema
                self.save_checkpoint(checkpointing.BEST)
                self.log.message(f"new best pseudo-Dice EMA {self.best_ema:.4f}: {checkpointing.BEST} written")
            # rank 0's clock decides, so that every rank joins the same checkpoint writes
            minutes_since_latest = ctx.value_of_main(int(time.monotonic() - latest_written)) / 60
            if self.epochs_completed < self.num_epochs and (
                self.epochs_completed % self.checkpoint_every == 0 or minutes_since_latest >= self.checkpoint_minutes
            ):
                self.save_checkpoint(checkpointing.LATEST)
                latest_written = time.monotonic()
            if budget.after_epoch(record.seconds, self.epochs_completed, self.num_epochs,
                                  self.optimization.schedule, self.iterations_per_epoch):
                self.log.message(
                    f"time budget of {budget.minutes:g} minutes used up after epoch {self.epochs_completed} of "
                    f"{self.num_epochs}: training ends here and finishes as if the schedule had ended"
                )
                break
        self.save_checkpoint(checkpointing.FINAL)
        self.save_checkpoint(checkpointing.LATEST)  # the same epoch, with what --c needs to extend the run
        self.log.message(
            f"training {'stopped by the time budget' if budget.stopped else 'finished'} after "
            f"{self.epochs_completed} epochs; {checkpointing.FINAL} written"
        )

    def validate(self) -> dict | None:
        """Whole-case validation on rank 0 (the others are done); returns the summary there."""
        if not self.context.is_main:
            return None
        note = " (fold 'all' has no held-out cases: these are its training cases, so the numbers are optimistic)"
        self.log.message(
            f"validating {len(self.fold.val)} case(s) with the sliding-window predictor"
            f"{note if self.fold.fold == 'all' else ''}"
        )
        summary = validate_cases(
            self.network_module,
            self.plans,
            self.description,
            self.store,
            self.fold.val,
            paths.raw_root() / self.dataset_name / "labelsTr",
            self.output_folder / VALIDATION_FOLDER,
            self.context.device,
            save_probabilities=self.request.save_probabilities,
            message=self.log.message,
        )
        self.log.message(f"validation summary: {self.output_folder / VALIDATION_FOLDER / SUMMARY_FILENAME}")
        return summary
