"""One prepared GPU check: the planner's vit_b plans trained for real, and one CT predicted.

    python benchmarks/gpu_checks.py                 # on one GPU, at most about 8 minutes
    python benchmarks/gpu_checks.py --dry-run       # CPU, vit_tiny, seconds (what the tests run)

For the planner's vit_b plans for a typical abdominal CT dataset (40 CTs of 300 x 512 x 512
voxels at 2.5 x 0.78 x 0.78 mm, 14 classes) at 8, 24 and 80 GiB, smallest first:

* real training steps (the trainer's loss and optimiser: Dice + cross-entropy over the three
  deep-supervision outputs, AdamW, gradient clipping, bf16 autocast) of the network with random
  weights in SAM's layout (the frozen encoder is random instead of SAM's: memory and time do not
  depend on the values); ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the
  measured steps against the memory model's estimate, seconds per step, the FLOPs per step and
  the achieved TFLOP/s against the planner's assumed sustained throughput;
* the SDPA kernel that ran (the ``aten`` attention operation seen during a step: flash,
  memory-efficient, cuDNN, or the math fallback);
* a plan whose estimate does not fit the card's memory is not run: the check stops cleanly there
  and records why.

Then the 24 GiB plan predicts one 512 x 512 x 300 CT (``Predictor.predict_volume``: preprocessing,
sliding window with mirroring, restoring to the input grid; one fold, random weights): timed with
the argmax on the GPU (``seconds``, of which ``network_seconds`` in the networks) and again with
the probabilities copied to the host first (``seconds_with_host_argmax``; the labels must agree);
then the same voxels at 0.7 x 0.7 x 1.25 mm (``seconds_resampled``): the image resampled to the
plan's grid and the scores back to the CT's, both on the GPU.

Results (with the GPU's name and torch version): ``benchmarks/results/gpu_checks.json``.
``--dry-run`` runs the same code on the CPU with vit_tiny plans of small budgets, a small CT and
the live-storage tracker (``nnsam3d.model.live_memory``) in place of the CUDA memory counters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nnsam3d.commands.command_line import ALLOCATOR_VARIABLES, prefer_expandable_cuda_segments
from nnsam3d.inference.predictor import Predictor
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.live_memory import LiveStorageTracker
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.model.network import build_network
from nnsam3d.model.gpu_throughput import throughput_for
from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss
from nnsam3d.trainers.optimization import Optimization, WarmupDecaySchedule, build_optimizer, precision_for

from benchmark_support import RESULTS, environment, typical_abdominal_ct_plans
from predict_speed import synthetic_ct

GPU_BUDGETS_GB = (8, 24, 80)
ACQUIRED_SPACING_IJK = (0.7, 0.7, 1.25)
"""mm of the CT predicted a second time: the plan's 0.78 x 0.78 x 2.5 mm is not its own."""
DRY_RUN_BUDGETS_GB = (0.2, 0.3)
"""CPU dry run: a small vit_tiny plan, and one that does not fit the dry run's 'card'."""
DRY_RUN_CARD_GB = 0.19
TIME_LIMIT_S = 8 * 60
WARMUP_STEPS, MEASURED_STEPS = 2, 5


class AttentionKernels(TorchDispatchMode):
    """Names of the ``aten`` scaled-dot-product-attention operations that run."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func) and "backward" not in str(func):
            self.seen.add(str(func._overloadpacket).removeprefix("aten."))
        return func(*args, **(kwargs or {}))


def sdpa_kernel_used(step) -> str:
    with AttentionKernels() as kernels:
        step()
    return ", ".join(sorted(kernels.seen)) or "math (no fused SDPA kernel ran)"


def training_check(plans, device: torch.device, steps: int) -> dict:
    """Real training steps of the plan's network (see the module); memory, time, kernel."""
    config = plans.network.replace(trainable="adapters" if plans.backbone != "vit_tiny" else "full")
    torch.manual_seed(0)
    network = build_network(config).to(device).train()
    optimizer = build_optimizer(network, 1e-4, 1e-2)
    precision = precision_for(device)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 1e-4, 1000, 0.05, "poly"), precision)
    loss_function = DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS)
    batch = plans.batch_size
    data = torch.randn(batch, config.in_channels, *config.patch_size, device=device)
    target = torch.randint(0, config.num_classes, (batch, 1, *config.patch_size), device=device, dtype=torch.int16)

    def step() -> None:
        with precision.autocast():
            loss = loss_function(network(data), target)
        optimization.step(loss)

    for _ in range(WARMUP_STEPS if device.type == "cuda" else 1):  # AdamW's state, cuDNN's algorithm choice, the allocator's pools
        step()
    kernel = sdpa_kernel_used(step)
    estimate = estimate_training_memory(config, batch, precision.name)
    result = {"patch_size": list(config.patch_size), "batch_size": batch, "backbone": config.backbone,
              "activation_checkpointing": config.activation_checkpointing,
              "checkpointed_blocks": config.checkpointed_blocks, "precision": precision.name,
              "sdpa_kernel": kernel, "estimate_bytes": estimate.breakdown()}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        result.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                      max_memory_reserved=torch.cuda.max_memory_reserved())
        measured = result["max_memory_allocated"]
    else:
        existing = [*network.parameters(), *(p.grad for p in network.parameters() if p.grad is not None),
                    *(t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)),
                    data, target]
        started = time.perf_counter()
        with LiveStorageTracker(existing) as tracker:
            for _ in range(steps):
                step()
        seconds = (time.perf_counter() - started) / steps
        result["live_storage_peak"] = measured = tracker.peak
    flops = estimate_training_flops(config, batch)
    result.update(
        seconds_per_step=round(seconds, 4),
        estimate_over_measured=round(estimate.total / measured, 3),
        flops_per_step=flops.total,
        achieved_tflops=round(flops.total / seconds / 1e12, 3),
    )
    # The planner's own time model for this GPU model (issue 24: its hours per fold within 15% of
    # a measured epoch): seconds per step at the throughput it plans this card with.
    throughput = throughput_for(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    result.update(assumed_sustained_tflops=throughput.flops_per_second / 1e12, throughput_source=throughput.source,
                  planned_over_measured_seconds=round(flops.total / throughput.flops_per_second / seconds, 3))
    del network, optimizer, optimization, data, target
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def prediction_check(plans, description, device: torch.device, shape_ijk) -> dict:
    network = build_network(plans.network.replace(deep_supervision=False, trainable="full"))
    predictor = Predictor([network], plans, description, device)
    affine = np.diag([0.78, 0.78, 2.5, 1.0])
    volume = synthetic_ct(shape_ijk)
    predictor.predict_volume(volume[:, :, : max(8, shape_ijk[2] // 5)], affine)  # warm-up

    def timed(device_argmax: bool) -> tuple[np.ndarray, float]:
        predictor.device_argmax = device_argmax
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        labels = predictor.predict_volume(volume, affine)
        return labels, time.perf_counter() - started

    network_before = predictor.window_ensemble.network_seconds
    labels, seconds = timed(device_argmax=True)
    network_seconds = predictor.window_ensemble.network_seconds - network_before
    host_labels, host_seconds = timed(device_argmax=False)  # the probabilities copied to the host first
    assert labels.shape == volume.shape
    # The same voxels acquired at 0.7 x 0.7 x 1.25 mm, as most CTs are not at the plan's spacing:
    # resampled to the network grid on the GPU, the scores back to the CT's grid there.
    predictor.device_argmax = True
    network_before = predictor.window_ensemble.network_seconds
    started = time.perf_counter()
    resampled_labels = predictor.predict_volume(volume, np.diag([*ACQUIRED_SPACING_IJK, 1.0]))
    resampled_seconds = time.perf_counter() - started
    assert resampled_labels.shape == volume.shape
    return {"image_shape_ijk": list(shape_ijk), "classes": description.num_classes,
            "patch_size": list(plans.patch_size), "mirroring": True, "step_size": 0.5, "seconds": round(seconds, 2),
            "network_seconds": round(network_seconds, 2),
            "seconds_with_host_argmax": round(host_seconds, 2),
            "labels_equal_host_argmax": bool(np.array_equal(labels, host_labels)),
            "acquired_spacing_ijk": list(ACQUIRED_SPACING_IJK), "seconds_resampled": round(resampled_seconds, 2),
            "network_seconds_resampled": round(predictor.window_ensemble.network_seconds - network_before, 2)}


def run_checks(dry_run: bool, card_bytes: int | None = None, save=lambda results: None,
               backbone: str = "vit_b", predict: bool = True) -> dict:
    """``save(results)`` is called after each part, so that a run stopped from outside (a lent
    machine's time running out) keeps the parts that finished."""
    prefer_expandable_cuda_segments()  # as every nnsam3d command does, before CUDA's first allocation
    device = torch.device("cpu" if dry_run else "cuda")
    started = time.perf_counter()
    if dry_run:
        budgets, card_bytes = DRY_RUN_BUDGETS_GB, card_bytes or int(DRY_RUN_CARD_GB * 2**30)
        card = {"gpu": "none (CPU dry run)", "card_bytes": card_bytes}
        ct_shape, steps = (48, 48, 16), 1
    else:
        properties = torch.cuda.get_device_properties(0)
        budgets, card_bytes = GPU_BUDGETS_GB, card_bytes or int(properties.total_memory)
        card = {"gpu": properties.name, "card_bytes": card_bytes, "cuda": torch.version.cuda,
                **{name: os.environ[name] for name in ALLOCATOR_VARIABLES if name in os.environ}}
        ct_shape, steps = (512, 512, 300), MEASURED_STEPS
    results = {"environment": {**environment(), **card}, "dry_run": dry_run, "plans": [], "stopped": None}
    plans_for_prediction = None
    for gigabytes in budgets:
        if dry_run:
            plans, description = _dry_run_plans(gigabytes)
        else:
            plans, description = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=gigabytes, backbone=backbone)
        if plans.memory.estimate_bytes > card_bytes:
            results["stopped"] = (f"the {gigabytes:g} GiB plan ({plans.backbone} {list(plans.patch_size)} x "
                                  f"{plans.batch_size}) needs about {plans.memory.estimate_bytes / 2**30:.1f} GiB, "
                                  f"more than this card's {card_bytes / 2**30:.1f} GiB: not run")
            break
        if time.perf_counter() - started > TIME_LIMIT_S:
            results["stopped"] = f"time limit of {TIME_LIMIT_S} s reached before the {gigabytes:g} GiB plan"
            break
        run = {"budget_gb": gigabytes, **training_check(plans, device, steps)}
        results["plans"].append(run)
        save(results)
        print(f"{gigabytes:g} GiB plan: {run['patch_size']} x {run['batch_size']}, {run['seconds_per_step']:.3f} s/step, "
              f"estimate/measured {run['estimate_over_measured']}, SDPA {run['sdpa_kernel']}", file=sys.stderr)
        if plans_for_prediction is None or gigabytes == 24:  # the 24 GiB plan on a GPU, the first in a dry run
            plans_for_prediction = (plans, description)
    if plans_for_prediction is not None and predict:
        results["prediction"] = prediction_check(*plans_for_prediction, device, ct_shape)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    save(results)
    return results


def _dry_run_plans(gigabytes: float):
    """vit_tiny plans of a small CT-like dataset on the CPU (the planner's own search)."""
    from nnsam3d.io.raw_dataset import DatasetDescription
    from nnsam3d.planners.experiment_planner import backbone_candidates, plan_for_target
    from nnsam3d.planners.gpu_memory import memory_target
    from nnsam3d.schemas.fingerprint import DatasetFingerprint, IntensityStatistics

    cases = [f"ct_{i:03d}" for i in range(10)]
    statistics = IntensityStatistics(mean=80.0, std=60.0, median=85.0, percentile_00_5=-90.0,
                                     percentile_99_5=280.0, min=-1024.0, max=3000.0)
    fingerprint = DatasetFingerprint(
        dataset_name="Dataset901_DryRunCT", case_ids=cases, spacings=[(2.5, 0.78, 0.78)] * 10,
        shapes_before_cropping=[(16, 48, 48)] * 10, shapes_after_cropping=[(16, 48, 48)] * 10,
        modalities={"0": "CT"}, intensity_statistics={"0": statistics},
    )
    description = DatasetDescription({"0": "CT"}, {"background": 0, "liver": 1, "tumour": 2}, 10, ".nii.gz")
    plans = plan_for_target(fingerprint, description, memory_target(gigabytes),
                            backbone_candidates("vit_tiny", (), on_gpu=True))
    return plans, description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, vit_tiny, seconds: checks the script itself")
    parser.add_argument("--output", type=Path, default=None,
                        help="result file (default benchmarks/results/gpu_checks.json; dry run: gpu_checks_dry_run.json)")
    parser.add_argument("--backbone", default="vit_b",
                        help="backbone of the planned runs (default vit_b; lite_medsam: LiteMedSAM's TinyViT)")
    parser.add_argument("--no-prediction", action="store_true", help="skip the whole-CT prediction")
    arguments = parser.parse_args(argv)
    if not arguments.dry_run and not torch.cuda.is_available():
        print("gpu_checks.py needs a CUDA GPU (torch.cuda.is_available() is False); use --dry-run on a CPU.",
              file=sys.stderr)
        return 2
    output = arguments.output or RESULTS / ("gpu_checks_dry_run.json" if arguments.dry_run else "gpu_checks.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    results = run_checks(arguments.dry_run, save=lambda results: output.write_text(json.dumps(results, indent=2) + "\n"),
                         backbone=arguments.backbone, predict=not arguments.no_prediction)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
