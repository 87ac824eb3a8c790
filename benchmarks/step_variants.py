"""Each change to the training step against the same step: seconds, TFLOP/s and peak memory of the
trainer's step in every variant, one after another in one process (issue 24, point 2: "each
measured before and after").

    python benchmarks/step_variants.py                     # one GPU: vit_b, the planner's 24 GiB plan
    python benchmarks/step_variants.py --budget-gb 32      # the 32 GiB plan
    python benchmarks/step_variants.py --cpu-demo          # CPU: vit_tiny on the demo's plan
    python benchmarks/step_variants.py --dry-run           # CPU, seconds (what the tests run)

Variants (``VARIANTS``): the eager step as the trainer runs it by default; the decoder without its
full-resolution norms (``nnSAM3DTrainer_noNormAtFullRes``); the decoder's convolutions channels-last
(``--channels-last``); the step compiled (``--compile``), compiled without the full-resolution norms,
and compiled as CUDA graphs (``--compile-mode reduce-overhead``, GPU only); and where the plan's
checkpointing is selective (only the first blocks, ``checkpointed_blocks``, or blocks that keep
their attention's output, ``kept_attention_blocks``: the planner's 24 and 32 GiB vit_b plans), the
step with every block checkpointed whole, as before the planner chose. Every variant builds
the same network from the same seed and trains on the same fixed batch (the data loader is
``profile_step.py``'s concern), so each one's first loss says whether it computes the same step.
The results file is rewritten after every variant: a run cut short by a time limit keeps the
variants it finished.

Results: ``benchmarks/results/step_variants_{cuda,cpu}.json`` (device, torch, CUDA, command).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nnsam3d.commands.command_line import prefer_expandable_cuda_segments
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.model.network import build_network, compile_network, use_channels_last_decoder
from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss, NetworkLoss
from nnsam3d.trainers.optimization import Optimization, WarmupDecaySchedule, build_optimizer, precision_for

from benchmark_support import RESULTS, environment, load_average, typical_abdominal_ct_plans
from profile_step import synchronize


@dataclass(frozen=True)
class Variant:
    norm_at_full_resolution: bool = True
    channels_last: bool = False
    compile_mode: str | None = None
    gpu_only: bool = False
    checkpoint_every_block: bool = False

    def applies_to(self, config) -> bool:
        """False where the variant is the plan itself: every block checkpointed whole already, or none."""
        return not self.checkpoint_every_block or config.checkpointed_blocks is not None or bool(config.kept_attention_blocks)


VARIANTS = {
    "eager": Variant(),
    # Before the planner's selective checkpointing, second: the compiled variants may meet the time limit.
    "every encoder block checkpointed": Variant(checkpoint_every_block=True),
    "no norm at full resolution": Variant(norm_at_full_resolution=False),
    "channels-last decoder": Variant(channels_last=True),
    "compiled": Variant(compile_mode="default"),
    "compiled, no norm at full resolution": Variant(norm_at_full_resolution=False, compile_mode="default"),
    "compiled, CUDA graphs": Variant(compile_mode="reduce-overhead", gpu_only=True),
}
WARMUP_STEPS = 3
"""Steps before timing: AdamW's state, cuDNN's kernel choice, compilation (and CUDA graph capture)."""


def measure_variant(config, batch_size: int, variant: Variant, device: torch.device, steps: int) -> dict:
    config = config.replace(norm_at_full_resolution=variant.norm_at_full_resolution)
    if variant.checkpoint_every_block:
        config = config.replace(checkpointed_blocks=None, kept_attention_blocks=())
    torch.manual_seed(0)
    network = build_network(config).to(device).train()
    if variant.channels_last:
        use_channels_last_decoder(network)
    optimizer = build_optimizer(network, 1e-4, 1e-2)
    precision = precision_for(device)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 1e-4, 10**6, 0.0), precision)
    step_forward = NetworkLoss(network, DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS))
    if variant.compile_mode:
        step_forward = compile_network(step_forward, variant.compile_mode)
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(batch_size, config.in_channels, *config.patch_size, generator=generator).to(device)
    target = torch.randint(0, config.num_classes, (batch_size, 1, *config.patch_size), generator=generator,
                           dtype=torch.int16).to(device)

    def step() -> torch.Tensor:
        with precision.autocast():
            loss = step_forward(data, target)
        optimization.step(loss)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    first_loss = float(step())
    for _ in range(WARMUP_STEPS - 1):
        step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    per_step = (time.perf_counter() - started) / steps
    flops = estimate_training_flops(config, batch_size)
    model_flops = flops.total - flops.parts.get("recompute", 0.0)
    result = {"first_loss": first_loss, "seconds_per_step": round(per_step, 4), "steps": steps,
              "checkpointed_blocks": config.checkpointed_block_count,
              "kept_attention_blocks": list(config.kept_attention_blocks),
              "warmup_seconds": round(warmup_seconds, 2), "model_tflop_per_s": round(model_flops / per_step / 1e12, 3),
              "hardware_tflop_per_s": round(flops.total / per_step / 1e12, 3),
              "recomputed_gflop_per_step": round(flops.parts.get("recompute", 0.0) / 1e9, 3),
              "estimated_peak_gib": round(estimate_training_memory(config, batch_size, precision.name).step_peak / 2**30, 3)}
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


def plan_for(arguments) -> tuple:
    """(network config as the default trainer trains it, batch size, description of the plan)."""
    if arguments.dry_run:
        from gpu_checks import _dry_run_plans

        plans, _ = _dry_run_plans(0.2)
        return plans.network.replace(trainable="full", deep_supervision=True), plans.batch_size, "vit_tiny, dry run"
    if arguments.cpu_demo:
        from train_speed import demo_plan

        with tempfile.TemporaryDirectory() as folder:
            plans, _ = demo_plan(Path(folder))
        return plans.network.replace(trainable="full", deep_supervision=True), plans.batch_size, "vit_tiny, demo plan"
    plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=arguments.budget_gb, backbone=arguments.backbone)
    return (plans.network.replace(trainable="adapters", deep_supervision=True), plans.batch_size,
            f"{arguments.backbone}, {arguments.budget_gb:g} GiB plan of a typical CT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, vit_tiny, seconds: checks the script itself")
    parser.add_argument("--cpu-demo", action="store_true", help="CPU, vit_tiny on the demo's plan")
    parser.add_argument("--budget-gb", type=float, default=24.0, help="GPU memory of the plan (default 24 GiB)")
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 6 on a GPU, 2 dry, 20 CPU)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="which to run (default: all that the device can run; on a CPU the eager ones)")
    parser.add_argument("--output", type=Path, default=None)
    arguments = parser.parse_args(argv)
    on_cpu = arguments.dry_run or arguments.cpu_demo
    if not on_cpu and not torch.cuda.is_available():
        print("step_variants.py needs a CUDA GPU; use --cpu-demo or --dry-run on a CPU.", file=sys.stderr)
        return 2
    prefer_expandable_cuda_segments()
    device = torch.device("cpu" if on_cpu else "cuda")
    steps = arguments.steps or (2 if arguments.dry_run else 20 if on_cpu else 6)
    config, batch_size, plan = plan_for(arguments)
    chosen = arguments.variants or [name for name, v in VARIANTS.items()
                                    if not (on_cpu and (v.gpu_only or v.compile_mode)) and v.applies_to(config)]
    result = {"environment": {**environment(), "gpu": torch.cuda.get_device_properties(0).name if not on_cpu else None,
                              "cuda": torch.version.cuda},
              "command": ["python", "benchmarks/step_variants.py", *(argv if argv is not None else sys.argv[1:])],
              "plan": plan, "patch_size": list(config.patch_size), "batch_size": batch_size,
              "activation_checkpointing": config.activation_checkpointing,
              "checkpointed_blocks": config.checkpointed_block_count,
              "kept_attention_blocks": list(config.kept_attention_blocks), "loadavg_before": load_average(),
              "variants": {}}
    output = arguments.output or RESULTS / f"step_variants_{'dry_run' if arguments.dry_run else device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        if VARIANTS[name].gpu_only and on_cpu:
            print(f"{name}: GPU only, skipped", file=sys.stderr)
            continue
        try:
            result["variants"][name] = measure_variant(config, batch_size, VARIANTS[name], device, steps)
        except Exception as error:  # one variant failing (out of memory, a compiler error) must not hide the others
            result["variants"][name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        print(name, json.dumps(result["variants"][name]), flush=True)
        result["loadavg_after"] = load_average()
        output.write_text(json.dumps(result, indent=2) + "\n")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    eager = result["variants"].get("eager", {}).get("seconds_per_step")
    if eager:
        for measured in result["variants"].values():
            if measured.get("seconds_per_step"):
                measured["speedup_over_eager"] = round(eager / measured["seconds_per_step"], 3)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
