"""The memory-aware choice of backbone, patch size, adapters, batch size and checkpointing.

The search walks a *ladder*: a fixed list of configurations ("rungs") in which every rung is at
least as large as the one before in every respect that matters to the user: patch (voxels per
axis), batch size, adapter blocks and width, backbone size. The plan is the highest rung whose
estimated training memory fits the usable budget, with activation checkpointing only where the
rung does not fit without it, and then the checkpointing that fits with the least recompute: the
first encoder blocks checkpointed, the others stored, and checkpointed blocks keeping their
attention's output (selective checkpointing) where memory is left. Because the ladder does not
depend on the budget, a larger budget can only reach the same rung or a higher one, so it never
gives a smaller plan: monotonic by construction, not by luck of the estimates (which need not
even grow along the ladder).

The ladder follows "context first, then capacity":

1. ``fallback``: on the smallest candidate backbone at the smallest patch, adapters in the last
   quarter, half, three quarters, then all blocks at width 32 (for tiny budgets only);
2. ``context``: all blocks at width 64, the patch grows (``network_geometry.patch_size_path``)
   up to the *reasonable patch*, the first spanning ``REASONABLE_CONTEXT_MM`` along every axis
   (or the whole median image);
3. ``backbone``: each larger candidate backbone at the reasonable patch, so that the largest SAM
   that fits with a reasonable patch is preferred;
4. ``context``: on the largest candidate, the patch grows to the median image;
5. ``capacity``: adapters widen to 128;
6. ``batch``: the batch grows to nnU-Net's cap (a batch sees at most 5% of the dataset's voxels).
   Only these rungs never use activation checkpointing: it costs about a third more compute per
   step, worth paying for context but not for a larger batch.

**Compute.** With a cost function and a limit (hours per fold on the reference GPU, from the
FLOPs per step, :mod:`nnsam3d.model.compute_budget`), a rung must also fit the limit: the
plan is the highest rung that fits both. The ladder is the same, so the plan is monotonic in both budgets,
and a larger backbone is chosen only when its step at the reasonable patch fits the compute
target, not merely the memory.

Every function is pure; the memory model and the cost are passed in
(``nnsam3d.model.memory_model.estimate_training_memory`` and hours per fold from
``nnsam3d.model.compute_model.estimate_training_flops`` in production).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import SAFETY_MARGIN  # planners, experiment planner and tests name it here
from nnsam3d.planners.network_geometry import patch_size_path, window_size_for

MIN_BATCH_SIZE = 2
"""nnU-Net's minimum: batch statistics and foreground oversampling need more than one patch."""

MAX_DATASET_SHARE_PER_BATCH = 0.05
"""nnU-Net's overfitting guard: one batch sees at most 5% of the dataset's voxels."""


REASONABLE_CONTEXT_MM = 128.0
"""A patch is reasonable once it spans this many mm along every axis (or the whole median
image): organ-sized context, about what nnU-Net's 3D plans get on 8-11 GB GPUs. Larger SAM
backbones enter the ladder here."""

FALLBACK_ADAPTER_DIM = 32
BASE_ADAPTER_DIM = 64
MAX_ADAPTER_DIM = 128


class MemoryEstimateLike(Protocol):
    @property
    def total(self) -> int: ...

    def breakdown(self) -> dict[str, int]: ...


MemoryEstimator = Callable[[NetworkConfig, int, str], MemoryEstimateLike]
"""(config, batch size, precision) → estimated peak training memory (bytes)."""


ComputeCost = Callable[[NetworkConfig, int], float]
"""(config, batch size) → the cost of training with it (hours per fold on the reference GPU);
it must not decrease along the ladder's rungs, as FLOPs do not."""

MEMORY_LIMIT, COMPUTE_LIMIT, LADDER_TOP = "memory", "compute", "ladder top"
"""What stopped the climb (``SearchResult.limited_by``)."""


FALLBACK_STAGE, CONTEXT_STAGE, BACKBONE_STAGE, CAPACITY_STAGE, BATCH_STAGE = (
    "fallback",
    "context",
    "backbone",
    "capacity",
    "batch",
)
"""Ladder stages, in ladder order (see the module docstring)."""

STAGES_WITHOUT_CHECKPOINTING = (BATCH_STAGE,)


@dataclass(frozen=True)
class Rung:
    """One candidate on the ladder (checkpointing is decided per rung by the search)."""

    backbone: str
    patch_size: tuple[int, int, int]
    adapter_blocks: tuple[int, ...]
    adapter_dim: int
    batch_size: int
    stage: str


@dataclass(frozen=True)
class SearchResult:
    """The chosen configuration and how it was found.

    rung_index / num_rungs: position of the chosen rung on the ladder (0-based).
    stage: the ladder stage of the chosen rung.
    usable_bytes: the budget after the safety margin.
    reasonable_patch: the patch at which larger backbones enter the ladder.
    larger_backbones_left: candidates larger than the chosen backbone (they did not fit).
    batch_cap: the largest batch the ladder offers (:func:`max_batch_size` of the full patch).
    cost: the compute cost of the chosen configuration (None without a cost function).
    limited_by: why the next rung was not taken: ``COMPUTE_LIMIT`` (its cost exceeds the compute
        target), ``MEMORY_LIMIT`` (it does not fit the memory) or ``LADDER_TOP``.
    """

    config: NetworkConfig
    batch_size: int
    estimate: MemoryEstimateLike
    usable_bytes: int
    rung_index: int
    num_rungs: int
    stage: str
    reasonable_patch: tuple[int, int, int]
    larger_backbones_left: tuple[str, ...]
    batch_cap: int
    cost: float | None = None
    limited_by: str = MEMORY_LIMIT


class PlanDoesNotFitError(ValueError):
    """Even the smallest configuration needs more memory than the budget."""


def order_by_size(backbones: Sequence[str]) -> list[str]:
    """Distinct backbone names, smallest first (validated against the registry)."""
    for name in backbones:
        get_backbone(name)
    return sorted(set(backbones), key=lambda name: (get_backbone(name).depth, get_backbone(name).embed_dim))


def last_blocks(depth: int, count: int) -> tuple[int, ...]:
    """Zero-based indices of the last ``count`` of ``depth`` blocks: adapting the deep blocks first,
    where features are most task-specific."""
    return tuple(range(depth - count, depth))


def fallback_adapter_steps(depth: int) -> list[tuple[tuple[int, ...], int]]:
    """(blocks, width) from the smallest adapter set up to all blocks at ``BASE_ADAPTER_DIM``."""
    counts = sorted({max(1, math.ceil(depth * quarter / 4)) for quarter in (1, 2, 3, 4)})
    steps = [(last_blocks(depth, count), FALLBACK_ADAPTER_DIM) for count in counts]
    return steps + [(last_blocks(depth, depth), BASE_ADAPTER_DIM)]


def reasonable_patch_index(
    path: Sequence[Sequence[int]], spacing: Sequence[float], context_mm: float = REASONABLE_CONTEXT_MM
) -> int:
    """Index of the first patch on ``path`` spanning ``context_mm`` (or the path's last extent)
    along every axis."""
    final_extent = [p * s for p, s in zip(path[-1], spacing)]
    wanted = [min(context_mm, extent) for extent in final_extent]
    for index, patch in enumerate(path):
        if all(p * s >= w - 1e-6 for p, s, w in zip(patch, spacing, wanted)):
            return index
    return len(path) - 1


def max_batch_size(patch_size: Sequence[int], median_shape: Sequence[int], num_cases: int) -> int:
    """Largest batch seeing at most 5% of the dataset's voxels per step (never below 2)."""
    dataset_voxels = math.prod(median_shape) * num_cases
    return max(MIN_BATCH_SIZE, round(MAX_DATASET_SHARE_PER_BATCH * dataset_voxels / math.prod(patch_size)))


def build_ladder(
    backbones: Sequence[str],
    patch_path: Sequence[tuple[int, int, int]],
    reasonable_index: int,
    batch_cap: int,
) -> list[Rung]:
    """The ladder (see the module docstring) for candidate ``backbones``, the patches of
    ``patch_path`` (smallest first), the reasonable patch ``patch_path[reasonable_index]`` and
    batches up to ``batch_cap``.

    Each rung is at least the previous one in patch (per axis), batch, adapter blocks (count)
    and width, and backbone size.
    """
    backbones = order_by_size(backbones)
    smallest, largest = backbones[0], backbones[-1]
    all_blocks = {name: last_blocks(get_backbone(name).depth, get_backbone(name).depth) for name in backbones}
    reasonable = patch_path[reasonable_index]
    full = patch_path[-1]
    rungs = [
        Rung(smallest, patch_path[0], blocks, dim, MIN_BATCH_SIZE, FALLBACK_STAGE)
        for blocks, dim in fallback_adapter_steps(get_backbone(smallest).depth)
    ]
    # The last fallback rung already is the smallest patch with the base adapters.
    rungs[-1] = replace(rungs[-1], stage=CONTEXT_STAGE)
    rungs += [
        Rung(smallest, patch, all_blocks[smallest], BASE_ADAPTER_DIM, MIN_BATCH_SIZE, CONTEXT_STAGE)
        for patch in patch_path[1 : reasonable_index + 1]
    ]
    rungs += [
        Rung(name, reasonable, all_blocks[name], BASE_ADAPTER_DIM, MIN_BATCH_SIZE, BACKBONE_STAGE)
        for name in backbones[1:]
    ]
    rungs += [
        Rung(largest, patch, all_blocks[largest], BASE_ADAPTER_DIM, MIN_BATCH_SIZE, CONTEXT_STAGE)
        for patch in patch_path[reasonable_index + 1 :]
    ]
    rungs.append(Rung(largest, full, all_blocks[largest], MAX_ADAPTER_DIM, MIN_BATCH_SIZE, CAPACITY_STAGE))
    rungs += [
        Rung(largest, full, all_blocks[largest], MAX_ADAPTER_DIM, batch, BATCH_STAGE)
        for batch in range(MIN_BATCH_SIZE + 1, batch_cap + 1)
    ]
    return rungs


def network_config_for(
    rung: Rung,
    token_size: Sequence[int],
    in_channels: int,
    num_classes: int,
    activation_checkpointing: bool,
) -> NetworkConfig:
    """The network of one rung. A SAM backbone keeps its pretrained weights frozen and trains its
    adapters; ``vit_tiny`` has no pretrained weights, so everything trains."""
    token_grid = [p // t for p, t in zip(rung.patch_size, token_size)]
    pretrained = get_backbone(rung.backbone).has_official_checkpoint
    return NetworkConfig(
        backbone=rung.backbone,
        in_channels=in_channels,
        num_classes=num_classes,
        patch_size=rung.patch_size,
        token_size=tuple(token_size),
        window_size=window_size_for(token_grid),
        adapter_blocks=rung.adapter_blocks,
        adapter_dim=rung.adapter_dim,
        activation_checkpointing=activation_checkpointing,
        trainable="adapters" if pretrained else "full",
    )


def least_recompute_checkpointing(
    checkpointed: NetworkConfig,
    batch_size: int,
    precision: str,
    estimate: MemoryEstimator,
    usable: int,
    estimated: MemoryEstimateLike,
) -> tuple[NetworkConfig, MemoryEstimateLike]:
    """``checkpointed`` (every encoder block checkpointed, its estimate ``estimated`` within
    ``usable``) with the checkpointing that fits and recomputes the fewest FLOPs: for each number
    of checkpointed blocks (counted from the first) that fits, as many of them as still fit keep
    their attention's output, global-attention blocks first (their attention grows with the square
    of the tokens, what they keep only linearly). A TinyViT checkpoints all or none."""
    spec = get_backbone(checkpointed.backbone)
    if spec.tiny_vit is not None:
        return checkpointed, estimated
    best: tuple[float, NetworkConfig, MemoryEstimateLike] | None = None
    # Scanned rather than bisected: the estimate need not fall with every block added (a larger
    # block's recompute may come back).
    for count in range(1, spec.depth + 1):
        config = checkpointed.replace(checkpointed_blocks=count)
        fitted = estimated if count == spec.depth else estimate(config, batch_size, precision)
        if fitted.total > usable:
            continue
        config, fitted = _keep_attention_where_it_fits(config, batch_size, precision, estimate, usable, fitted)
        recompute = estimate_training_flops(config, batch_size).parts["recompute"]
        if best is None or recompute < best[0]:
            best = (recompute, config, fitted)
    assert best is not None  # every block checkpointed fits
    return best[1], best[2]


def _keep_attention_where_it_fits(config: NetworkConfig, batch_size: int, precision: str, estimate: MemoryEstimator,
                                  usable: int, fitted: MemoryEstimateLike) -> tuple[NetworkConfig, MemoryEstimateLike]:
    """The most checkpointed blocks, global ones first, that keep their attention and still fit
    (what they keep only adds memory, so the count that fits is bisected)."""
    spec = get_backbone(config.backbone)
    blocks = [b for b in range(spec.depth) if config.is_checkpointed(b)]
    candidates = sorted(blocks, key=lambda b: (b not in spec.global_attn_indexes, b))
    low, high = 0, len(candidates)  # keeping ``low`` fits; find the largest
    best = (config, fitted)
    while low < high:
        middle = (low + high + 1) // 2
        trial = config.replace(kept_attention_blocks=candidates[:middle])
        trial_estimate = estimate(trial, batch_size, precision)
        if trial_estimate.total <= usable:
            low, best = middle, (trial, trial_estimate)
        else:
            high = middle - 1
    return best


def search_network(
    *,
    backbones: Sequence[str],
    spacing: Sequence[float],
    median_shape: Sequence[int],
    token_size: Sequence[int],
    num_cases: int,
    in_channels: int,
    num_classes: int,
    target_bytes: int,
    precision: str,
    estimate: MemoryEstimator,
    compute_cost: ComputeCost | None = None,
    cost_limit: float | None = None,
) -> SearchResult:
    """The highest rung of the ladder whose estimate fits ``SAFETY_MARGIN * target_bytes`` and,
    with ``compute_cost`` and ``cost_limit``, whose cost is at most ``cost_limit``.

    ``spacing``: target spacing (mm). ``median_shape``: voxels at that spacing.
    ``token_size``: voxels per token (z, y, x). ``num_cases``: training cases (batch cap).
    Raises :class:`PlanDoesNotFitError` when not even the smallest rung fits the memory (the
    smallest rung is kept whatever its compute: a plan that is slow beats no plan).
    """
    usable = int(SAFETY_MARGIN * target_bytes)
    path = patch_size_path(spacing, token_size, median_shape)
    reasonable = reasonable_patch_index(path, spacing)
    batch_cap = max_batch_size(path[-1], median_shape, num_cases)
    ladder = build_ladder(backbones, path, reasonable, batch_cap)

    best: tuple[int, NetworkConfig, MemoryEstimateLike, float | None] | None = None
    over_compute: set[int] = set()  # rungs whose cost exceeds the compute target

    def over_limit(config: NetworkConfig, rung: Rung, index: int) -> tuple[bool, float | None]:
        if compute_cost is None:
            return False, None
        cost = compute_cost(config, rung.batch_size)
        # The first rung stays whatever its cost: a slow plan beats none.
        return cost_limit is not None and cost > cost_limit and index > 0, cost

    for index, rung in enumerate(ladder):
        # Every rung is tried, not just up to the first that fails: the highest fitting rung is
        # what makes the plan monotonic in the budgets, whatever the estimates do along the way.
        config = network_config_for(rung, token_size, in_channels, num_classes, False)
        over, cost = over_limit(config, rung, index)
        if over:
            # Checkpointing only adds compute (forwards again), so the rung is over with it too.
            over_compute.add(index)
            continue
        estimated = estimate(config, rung.batch_size, precision)
        if estimated.total > usable:
            if rung.stage in STAGES_WITHOUT_CHECKPOINTING:
                continue
            config = network_config_for(rung, token_size, in_channels, num_classes, True)
            estimated = estimate(config, rung.batch_size, precision)
            if estimated.total > usable:
                continue
            config, estimated = least_recompute_checkpointing(config, rung.batch_size, precision, estimate, usable, estimated)
            over, cost = over_limit(config, rung, index)
            if over:
                over_compute.add(index)
                continue
        best = (index, config, estimated, cost)
    if best is None:
        first = ladder[0]
        need = estimate(network_config_for(first, token_size, in_channels, num_classes, True), first.batch_size, precision)
        raise PlanDoesNotFitError(
            f"even the smallest configuration ({first.backbone}, patch {first.patch_size}, batch "
            f"{first.batch_size}, activation checkpointing) needs about {need.total / 2**30:.1f} GiB, more than "
            f"{SAFETY_MARGIN:.0%} of the {target_bytes / 2**30:.1f} GiB memory target. Give a larger "
            f"--gpu-memory-gb or a smaller --backbone."
        )
    index, config, estimated, cost = best
    if index + 1 == len(ladder):
        limited_by = LADDER_TOP
    elif index + 1 in over_compute:
        limited_by = COMPUTE_LIMIT
    else:
        limited_by = MEMORY_LIMIT
    # The ladder enters the backbones smallest first, so its order is order_by_size's.
    candidates = list(dict.fromkeys(rung.backbone for rung in ladder))
    return SearchResult(
        config=config,
        batch_size=ladder[index].batch_size,
        estimate=estimated,
        usable_bytes=usable,
        rung_index=index,
        num_rungs=len(ladder),
        stage=ladder[index].stage,
        reasonable_patch=path[reasonable],
        larger_backbones_left=tuple(candidates[candidates.index(config.backbone) + 1 :]),
        batch_cap=batch_cap,
        cost=cost,
        limited_by=limited_by,
    )
