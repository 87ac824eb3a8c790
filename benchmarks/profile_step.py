"""Where a training step's time goes: torch.profiler over the trainer's own step on a planned plan.

    python benchmarks/profile_step.py                 # one GPU: vit_b, the planner's 24 GiB plan
    python benchmarks/profile_step.py --dry-run       # CPU, vit_tiny, a minute (what the tests run)

The step is the trainer's (``NetworkLoss``: network and deep-supervision Dice + cross-entropy in
one forward; AdamW over the trained tensors, gradient clipping, bf16 autocast on the GPU), fed by
the trainer's own batch stream (``PatchDataLoader``, the plan's augmentation, the default number
of augmentation workers) over synthetic preprocessed cases at the plan's patch size and spacing.

It reports:

* **time by part**: every operation the profiler records is put in one part by its name (and, for
  convolutions, its weight's shape): ``attention`` (SDPA kernels forward and backward),
  ``linear layers`` (matrix products: qkv, projections, MLPs), ``adapter convolutions``
  (depthwise 3D: one input channel per group), ``convolutions`` (patch embedding, decoder,
  TinyViT's MBConv), ``norms``, ``activations``, ``loss`` (cross-entropy's softmax and NLL),
  ``optimizer`` (everything inside AdamW's step and the gradient clipping), ``copies and casts``,
  ``other`` (the remaining elementwise work and reductions). Device time on a GPU, CPU time on the
  CPU; each operation's self time, so nested operations are not counted twice;
* **idle**: the step's wall time not covered by device work (launch overhead, synchronisation);
* **data wait**: the share of the wall time spent waiting for the batch stream (goal: below 5%);
* **FLOPs**: model FLOPs (what the network needs, no recompute) and hardware FLOPs (what runs,
  activation checkpointing's recompute included), from the compute model, with PyTorch's FLOP
  counter over one real step (it counts what runs), and the TFLOP/s of each.

Results: ``benchmarks/results/profile_step.json`` (device, torch, CUDA and the command with them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from nnsam3d.commands.command_line import prefer_expandable_cuda_segments
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.network import build_network
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.trainers.augmentation import settings_for, training_transforms
from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.batch_streams import default_num_workers, training_loader
from nnsam3d.trainers.data_loading import (
    foreground_samples_per_batch,
    start_batch_stream,
    stop_batch_stream,
)
from nnsam3d.trainers.distributed import DistributedContext
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss, NetworkLoss
from nnsam3d.trainers.optimization import Optimization, WarmupDecaySchedule, build_optimizer, precision_for

from benchmark_support import RESULTS, environment, typical_abdominal_ct_plans, write_result

PARTS = ("attention", "linear layers", "adapter convolutions", "convolutions", "norms", "activations", "loss",
         "optimizer", "copies and casts", "other")
OPTIMIZER_SCOPE = "Optimizer.step"
"""The record_function that torch.optim puts around every optimiser step."""
WARMUP_STEPS, PROFILED_STEPS = 3, 5
SYNTHETIC_CASES = 4
TOP_OPERATIONS = 15

_NAME_RULES = (  # first match wins; names are lower-case aten operation names
    ("attention", ("attention", "flash", "sdpa")),
    ("linear layers", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("norms", ("norm",)),
    ("activations", ("gelu", "relu", "silu", "sigmoid", "hardswish")),
    ("loss", ("nll_loss", "log_softmax", "cross_entropy")),
    ("copies and casts", ("copy_", "_to_copy", "clone", "contiguous", "aten::cat", "pad", "fill_", "zero_")),
)


def convolution_kernel(name: str, input_shapes) -> list[int] | None:
    """The 3D kernel's shape among an operation's input shapes: convolution(input, weight, ...),
    convolution_backward(grad_output, input, weight, ...); None when the shapes do not show it."""
    volumes = [shape for shape in (input_shapes or []) if isinstance(shape, list) and len(shape) == 5]
    index = 2 if "backward" in name.lower() else 1
    return volumes[index] if len(volumes) > index else None


def part_of(name: str, input_shapes, in_optimizer: bool, kernel: list[int] | None = None) -> str:
    """The part of ``PARTS`` an operation belongs to (see the module's docstring). ``kernel``: a
    convolution's kernel shape when its own shapes do not show it (autograd's wrapper events)."""
    name = name.lower()
    if in_optimizer or "_foreach" in name:  # AdamW's step; the gradient clipping's norms and scaling
        return "optimizer"
    if "conv" in name:
        kernel = convolution_kernel(name, input_shapes) or kernel
        # A depthwise 3D kernel has one input channel per group.
        return "adapter convolutions" if kernel is not None and kernel[1] == 1 else "convolutions"
    for part, needles in _NAME_RULES:
        if any(needle in name for needle in needles):
            return part
    return "other"


def _inside(event, scope: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(scope):
            return True
        parent = parent.cpu_parent
    return False


def _kernel_below(event) -> list[int] | None:
    """The first convolution kernel shape among ``event``'s descendants (autograd's
    ``evaluate_function: ConvolutionBackward0`` has no shapes; the operation it calls has)."""
    for child in event.cpu_children:
        kernel = convolution_kernel(child.name, child.input_shapes) if "conv" in child.name.lower() else None
        if kernel is None:
            kernel = _kernel_below(child)
        if kernel is not None:
            return kernel
    return None


def time_by_part(events, on_gpu: bool) -> tuple[dict[str, float], list[dict]]:
    """Seconds of self time per part over ``events`` (a profiler's ``events()``), and the
    operations that took the most (name, part, seconds), the detail behind a large part."""
    seconds = dict.fromkeys(PARTS, 0.0)
    by_operation: dict[tuple[str, str], float] = {}
    for event in events:
        if event.device_type != DeviceType.CPU or event.name.startswith(OPTIMIZER_SCOPE):
            continue  # kernels are counted with the operation that launched them
        own = (event.self_device_time_total if on_gpu else event.self_cpu_time_total) / 1e6
        if own > 0:
            part = part_of(event.name, event.input_shapes, _inside(event, OPTIMIZER_SCOPE),
                           _kernel_below(event) if "conv" in event.name.lower() else None)
            seconds[part] += own
            by_operation[event.name, part] = by_operation.get((event.name, part), 0.0) + own
    top = sorted(by_operation.items(), key=lambda item: -item[1])[:TOP_OPERATIONS]
    return seconds, [{"operation": name, "part": part, "seconds": round(own, 5)} for (name, part), own in top]


def synthetic_store(folder: Path, plans) -> PreprocessedCaseStore:
    """``SYNTHETIC_CASES`` preprocessed cases one and a half patches large, with a ball per class,
    at the plan's spacing: what the batch stream reads does not depend on the values. Each ball is
    drawn in its own box (a whole-volume coordinate grid would take gigabytes at vit_b's patches)."""
    store = PreprocessedCaseStore(folder)
    shape = np.array([int(p * 1.5) for p in plans.patch_size])
    radius = max(2, int(shape.min()) // 6)
    rng = np.random.default_rng(0)
    affine = tuple(tuple(row) for row in np.eye(4))
    spacing = tuple(plans.target_spacing)
    for index in range(SYNTHETIC_CASES):
        label = np.zeros(tuple(shape), dtype=np.int16)
        boxes = {}
        for value in range(1, plans.network.num_classes):
            centre = rng.integers(0, shape)
            low, high = np.maximum(centre - radius, 0), np.minimum(centre + radius + 1, shape)
            box = tuple(slice(a, b) for a, b in zip(low, high))
            z, y, x = np.ogrid[box]
            ball = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
            label[box][ball] = value
            boxes[value] = (box, low)
        locations = {value: (np.argwhere(label[box] == value) + low)[::50] for value, (box, low) in boxes.items()}
        locations = {value: found for value, found in locations.items() if len(found)}  # a later ball covered it
        image = rng.standard_normal((plans.network.in_channels, *shape), dtype=np.float32)
        whole = tuple((0, int(n)) for n in shape)
        size = tuple(int(n) for n in shape)
        properties = CaseProperties(f"case_{index}", ImageGeometry(size[::-1], affine), spacing, size, whole, size,
                                    spacing, size, tuple(locations))
        store.write_case(f"case_{index}", image, label, properties, locations)
    return store


def profile_plan(plans, device: torch.device, steps: int, warmup: int) -> dict:
    config = plans.network.replace(trainable="adapters" if plans.backbone != "vit_tiny" else "full",
                                   deep_supervision=True)
    torch.manual_seed(0)
    network = build_network(config).to(device).train()
    optimizer = build_optimizer(network, 1e-4, 1e-2)
    precision = precision_for(device)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 1e-4, 10**6, 0.05), precision)
    step_forward = NetworkLoss(network, DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS))

    def train_step(batch: dict) -> None:
        data = batch["data"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        with precision.autocast():
            loss = step_forward(data, target)
        optimization.step(loss)

    workers = default_num_workers(DistributedContext(device=device))
    settings = settings_for(plans.patch_size, plans.target_spacing, plans.anisotropic_axis)
    with tempfile.TemporaryDirectory() as folder:
        store = synthetic_store(Path(folder), plans)
        loader = training_loader(store.folder, store.case_ids(), plans.batch_size, settings,
                                 foreground_samples_per_batch(plans.batch_size, plans.foreground_oversampling))
        stream = start_batch_stream(loader, training_transforms(settings), workers, 0, device.type == "cuda")
        try:
            for _ in range(warmup):
                train_step(next(stream))
            synchronize(device)
            waited = 0.0
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            started = time.perf_counter()
            with profile(activities=activities, record_shapes=True) as profiler:
                for _ in range(steps):
                    asked = time.perf_counter()
                    batch = next(stream)
                    waited += time.perf_counter() - asked
                    train_step(batch)
                synchronize(device)
            wall = time.perf_counter() - started
            counted = counted_step_flops(train_step, next(stream))
        finally:
            stop_batch_stream(stream)
    parts, top_operations = time_by_part(profiler.events(), device.type == "cuda")
    busy = sum(parts.values())
    estimate = estimate_training_flops(config, plans.batch_size)
    recompute = estimate.parts.get("recompute", 0.0)
    per_step = wall / steps
    return {
        "backbone": config.backbone, "patch_size": list(config.patch_size), "batch_size": plans.batch_size,
        "activation_checkpointing": config.activation_checkpointing,
        "checkpointed_blocks": config.checkpointed_blocks, "precision": precision.name,
        "augmentation_workers": workers, "steps": steps, "seconds_per_step": round(per_step, 4),
        "seconds_by_part_per_step": {part: round(seconds / steps, 5) for part, seconds in parts.items()},
        "share_by_part": {part: round(seconds / busy, 4) if busy else 0.0 for part, seconds in parts.items()},
        "top_operations_over_all_steps": top_operations,
        "idle_share": round(max(0.0, 1 - busy / wall), 4) if device.type == "cuda" else None,
        "data_wait_share": round(waited / wall, 4),
        "model_tflop_per_step": round((estimate.total - recompute) / 1e12, 4),
        "hardware_tflop_per_step": round(estimate.total / 1e12, 4),
        "counted_tflop_per_step": round(counted / 1e12, 4),
        "model_tflop_per_s": round((estimate.total - recompute) / per_step / 1e12, 3),
        "hardware_tflop_per_s": round(estimate.total / per_step / 1e12, 3),
    }


def counted_step_flops(train_step, batch: dict) -> float:
    """PyTorch's FLOP counter over one real step (forward, backward with any recompute, optimiser)."""
    with FlopCounterMode(display=False) as counter:
        train_step(batch)
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, vit_tiny, about a minute: checks the script itself")
    parser.add_argument("--budget-gb", type=float, default=24.0, help="GPU memory of the plan (default 24 GiB)")
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--steps", type=int, default=PROFILED_STEPS)
    parser.add_argument("--output", type=Path, default=None,
                        help="result file (default benchmarks/results/profile_step.json; dry run: profile_step_dry_run.json)")
    arguments = parser.parse_args(argv)
    if not arguments.dry_run and not torch.cuda.is_available():
        print("profile_step.py needs a CUDA GPU (torch.cuda.is_available() is False); use --dry-run on a CPU.",
              file=sys.stderr)
        return 2
    prefer_expandable_cuda_segments()
    if arguments.dry_run:
        from gpu_checks import _dry_run_plans

        plans, _ = _dry_run_plans(0.2)
        device, steps, warmup, gpu = torch.device("cpu"), 2, 1, "none (CPU dry run)"
    else:
        plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=arguments.budget_gb, backbone=arguments.backbone)
        device, steps, warmup = torch.device("cuda"), arguments.steps, WARMUP_STEPS
        gpu = torch.cuda.get_device_properties(0).name
    result = {"environment": {**environment(), "gpu": gpu, "cuda": torch.version.cuda},
              "command": ["python", "benchmarks/profile_step.py", *(argv if argv is not None else sys.argv[1:])],
              "dry_run": arguments.dry_run, "budget_gb": arguments.budget_gb,
              **profile_plan(plans, device, steps, warmup)}
    output = arguments.output or RESULTS / ("profile_step_dry_run.json" if arguments.dry_run else "profile_step.json")
    write_result(output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
