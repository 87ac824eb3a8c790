"""The paragraph the planner prints and records in ``Plans.explanation``: what it chose and why,
with the key numbers (spacing, normalisation, backbone, tokens, patch, adapters, batch,
checkpointing, memory, compute)."""

from __future__ import annotations

import math
from typing import Sequence

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.compute_budget import CPU_SUSTAINED_FLOPS, cpu_step_seconds, epoch_seconds, fold_hours
from nnsam3d.model.config import NetworkConfig
from nnsam3d.planners.gpu_memory import BYTES_PER_GB
from nnsam3d.planners.network_geometry import SAM_IN_PLANE_TOKEN
from nnsam3d.planners.network_search import (
    BATCH_STAGE,
    COMPUTE_LIMIT,
    FALLBACK_STAGE,
    MAX_DATASET_SHARE_PER_BATCH,
    REASONABLE_CONTEXT_MM,
    SAFETY_MARGIN,
    SearchResult,
)
from nnsam3d.schemas.plans import ChannelNormalization, ComputeBudget, Plans

AXIS_NAMES = ("z", "y", "x")


def _dims(values: Sequence[float], digits: int = 0) -> str:
    return " x ".join(f"{v:.{digits}f}" if digits else f"{round(v)}" for v in values)


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / BYTES_PER_GB:.1f} GiB"


def _describe_normalization(normalization: Sequence[ChannelNormalization], mask_reason: str) -> str:
    """CT channels one by one (their clipping range matters), the others grouped by scheme.

    ``mask_reason``: why the non-zero mask is used, for channels that use it.
    """
    parts, channels_by_scheme = [], {}
    for n in normalization:
        if n.scheme == "CTNormalization":
            parts.append(
                f"{n.modality} → {n.scheme} (clip to {n.lower_bound:g}..{n.upper_bound:g}, "
                f"mean {n.mean:g}, std {n.std:g})"
            )
        else:
            channels_by_scheme.setdefault((n.scheme, n.use_nonzero_mask), []).append(n.modality)
    for (scheme, masked), names in channels_by_scheme.items():
        text = f"{', '.join(names)} → {scheme}"
        if masked:
            text += f" inside the non-zero mask ({mask_reason})"
        parts.append(text)
    return "; ".join(parts)


def _describe_adapters(blocks: Sequence[int], dim: int, depth: int) -> str:
    if len(blocks) == depth:
        return f"3D adapters of width {dim} in all {depth} blocks"
    return f"3D adapters of width {dim} in the last {len(blocks)} of {depth} blocks (blocks {blocks[0]}-{blocks[-1]})"


def _describe_checkpointing(network: NetworkConfig, depth: int, stage: str) -> str:
    if not network.activation_checkpointing:
        return "off (it may buy context, never just a larger batch)" if stage == BATCH_STAGE else "off (not needed to fit)"
    count = network.checkpointed_block_count
    where = "in every encoder block" if count == depth else f"in the first {count} of {depth} encoder blocks"
    text = f"on {where}, because the plan does not fit without it"
    if network.kept_attention_blocks:
        blocks = ", ".join(map(str, network.kept_attention_blocks))
        text += f"; blocks {blocks} keep their attention's output instead of recomputing it"
    if count < depth or network.kept_attention_blocks:
        text += " (the checkpointing that fits with the least recompute)"
    return text


def _describe_compute(compute: ComputeBudget, result: SearchResult, on_gpu: bool) -> str:
    text = (
        f"Compute: {compute.flops_per_step / 1e12:.2f} TFLOP per training step, so about "
        f"{compute.epoch_seconds / 60:.1f} min per epoch and {compute.fold_hours:.1f} h per fold of the default "
        f"schedule on {compute.reference_gpu}, assuming a sustained {compute.sustained_tflops:g} TFLOP/s"
        + (f" ({compute.throughput_source})" if compute.throughput_source else "")
    )
    if not on_gpu:
        # What a CPU user waits for: the GPU figures above are only the search's unit.
        cpu_epoch = epoch_seconds(compute.flops_per_step, compute.forward_flops, CPU_SUSTAINED_FLOPS)
        cpu_fold = fold_hours(compute.flops_per_step, compute.forward_flops, CPU_SUSTAINED_FLOPS)
        text += (f", roughly {cpu_step_seconds(compute.flops_per_step):.1f} s per step on 2 CPU cores "
                 f"({cpu_epoch / 60:.1f} min per epoch and {cpu_fold:.1f} h per fold of the default schedule there; "
                 f"nnsam3d_train's --epochs, --iterations-per-epoch or --time-budget-minutes shorten it)")
    text += f"; target {compute.target_fold_hours:.2g} h per fold ({compute.source})"
    if result.limited_by == COMPUTE_LIMIT:
        return text + ", which stopped the search here: the next larger plan would exceed it."
    return text + "."


def explain_plan(
    plans: Plans,
    result: SearchResult,
    backbone_reason: str,
    coarse_axis: int | None,
    mask_reason: str = "",
) -> str:
    """One paragraph saying what the planner chose and why, with the key numbers.

    ``backbone_reason``: why this backbone (``BackboneCandidates.reason``).
    ``coarse_axis``: the axis whose target spacing is not the median (``spacing``), or None.
    ``mask_reason``: why z-scored channels use the non-zero mask, if they do.
    """
    network = plans.network
    spacing, median_shape = plans.target_spacing, plans.median_shape
    spec = get_backbone(network.backbone)

    spacing_text = f"Target spacing {_dims(spacing, 2)} mm (z, y, x)"
    if coarse_axis is not None:
        spacing_text += (
            f", the median except along {AXIS_NAMES[coarse_axis]}, which has few thick slices and takes the "
            f"10th percentile of its spacings to avoid interpolating across them"
        )
    else:
        spacing_text += ", the median over cases"

    token_mm = [t * s for t, s in zip(network.token_size, spacing)]
    tokens_text = None
    if spec.is_tiny_vit:
        in_plane_text = "LiteMedSAM's TinyViT keeps every slice and strides 4 in-plane"
        tokens_text = (
            f"per-slice attention windows of LiteMedSAM's {', '.join(map(str, spec.tiny_vit.window_sizes[1:]))} "
            f"tokens; intensities {network.input_window[0]:.2f}..{network.input_window[1]:.2f} (normalised) "
            f"scaled to LiteMedSAM's [0, 1]"
        )
    elif network.token_size[1] == SAM_IN_PLANE_TOKEN:
        in_plane_text = f"in-plane SAM's {SAM_IN_PLANE_TOKEN}-voxel patch kernel as is"
    else:
        in_plane_text = f"in-plane {network.token_size[1]} voxels, finer than SAM's {SAM_IN_PLANE_TOKEN}, as the images are small"
    patch_mm = [p * s for p, s in zip(network.patch_size, spacing)]
    coverage = [min(1.0, p / m) for p, m in zip(network.patch_size, median_shape)]
    volume_coverage = math.prod(coverage)
    if result.stage == FALLBACK_STAGE:
        patch_reason = "memory is tight, so this is the smallest patch, with adapters in fewer blocks"
    elif all(c >= 1.0 for c in coverage):
        patch_reason = "it covers the whole median image, so the remaining memory went to adapter width and batch size"
    elif result.larger_backbones_left and network.patch_size == result.reasonable_patch:
        patch_reason = (
            f"it is the reasonable context (at least {REASONABLE_CONTEXT_MM:g} mm per axis where the image allows); "
            f"larger contexts are kept for the larger backbone(s) {', '.join(result.larger_backbones_left)}, which do "
            f"not fit the memory or compute target, so that a larger budget can never give a smaller plan"
        )
    elif result.limited_by == COMPUTE_LIMIT:
        patch_reason = (
            "it is the largest context (equal extent in mm per axis where the image allows) within the compute "
            "target; more memory would be left unused rather than make a fold take longer"
        )
    else:
        patch_reason = "it is the largest context (equal extent in mm per axis where the image allows) that fits"

    checkpointing = _describe_checkpointing(network, spec.depth, result.stage)
    batch_text = f"batch size {plans.batch_size}"
    if plans.batch_size >= result.batch_cap and plans.batch_size > 2:
        batch_text += f" (capped so that a batch sees at most {MAX_DATASET_SHARE_PER_BATCH:.0%} of the dataset)"

    sentences = [
        f"{plans.dataset_name}: {spacing_text}; median image {_dims(median_shape)} voxels at that spacing.",
        f"Normalisation: {_describe_normalization(plans.normalization, mask_reason)}.",
        f"Backbone {network.backbone} ({spec.depth} blocks, width {spec.embed_dim}, trainable: {network.trainable}), "
        f"because {backbone_reason}.",
        f"Tokens of {_dims(network.token_size)} voxels ({_dims(token_mm, 1)} mm): {in_plane_text}; "
        + (tokens_text or f"depth chosen so that a token is about as deep as it is wide in mm; attention windows of "
           f"{_dims(network.window_size)} tokens ({network.window_padding_ratio:.2f} tokens processed per real token)")
        + ".",
        f"Patch {_dims(network.patch_size)} voxels ({_dims(patch_mm)} mm, {network.num_tokens} tokens), covering "
        f"{volume_coverage:.0%} of the median image volume ({', '.join(f'{c:.0%}' for c in coverage)} per axis): "
        f"{patch_reason}.",
        f"{_describe_adapters(network.adapter_blocks, network.adapter_dim, spec.depth)}; "
        f"{batch_text}; activation checkpointing {checkpointing}.",
        f"Estimated peak training memory {_gib(plans.memory.estimate_bytes)} ({plans.memory.precision}) against a "
        f"target of {_gib(plans.memory.target_bytes)} ({plans.memory.source}), planned to at most "
        f"{SAFETY_MARGIN:.0%} ({_gib(result.usable_bytes)}); search order: context first, then capacity "
        f"(rung {result.rung_index + 1} of {result.num_rungs}).",
    ]
    if plans.compute is not None:
        sentences.append(_describe_compute(plans.compute, result, on_gpu=plans.memory.precision != "fp32"))
    return " ".join(sentences)
