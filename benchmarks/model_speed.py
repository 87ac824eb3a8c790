"""Forward+backward time of 3DMedSAM.

CPU: vit_tiny at a 64^3 patch (the CPU demo's backbone) -> ``benchmarks/results/model_speed_cpu.json``.
CUDA (when available): vit_b at the default patch of ``NetworkConfig`` with bf16 autocast
-> ``benchmarks/results/model_speed_cuda.json``.

Weights are random (speed does not depend on them). Times are medians over the timed steps,
after warm-up steps; one step is forward, a stand-in loss on every output, backward.

    python benchmarks/model_speed.py [--steps 10] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network, count_parameters

from benchmark_support import environment, write_result

CPU_CONFIG = NetworkConfig(
    backbone="vit_tiny", patch_size=(64, 64, 64), token_size=(4, 16, 16), num_classes=4,
    adapter_blocks=(0, 1, 2, 3), adapter_dim=16, decoder_channels=(16, 32, 64, 128),
)
CPU_BATCH = 2
CUDA_CONFIG = NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12)))
CUDA_BATCH = 2


def time_steps(config: NetworkConfig, batch: int, device: str, warmup: int, steps: int) -> dict:
    network = build_network(config).to(device).train()
    x = torch.randn(batch, config.in_channels, *config.patch_size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            outputs = network(x)
        sum(o.float().square().mean() for o in outputs).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        network.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    counts = count_parameters(network)
    return {
        "config": config.to_json(),
        "batch_size": batch,
        "parameters": {"trainable": counts.trainable, "total": counts.total},
        "forward_backward_s": {
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
            "steps": steps,
            "warmup_steps": warmup,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {**environment(), "platform": platform.platform()}
    result = {"machine": machine, **time_steps(CPU_CONFIG, CPU_BATCH, "cpu", args.warmup, args.steps)}
    write_result("model_speed_cpu.json", result)
    print(f"CPU ({machine['cpu']}, {machine['torch_threads']} threads): vit_tiny {CPU_CONFIG.patch_size} x{CPU_BATCH}: "
          f"{result['forward_backward_s']['median']:.3f} s per forward+backward")

    if torch.cuda.is_available():
        gpu = {"gpu": torch.cuda.get_device_name(), **machine}
        torch.backends.cudnn.benchmark = True
        timing = time_steps(CUDA_CONFIG, CUDA_BATCH, "cuda", args.warmup, args.steps)
        result = {"machine": gpu, "precision": "bf16", **timing}
        write_result("model_speed_cuda.json", result)
        print(f"CUDA ({gpu['gpu']}): vit_b {CUDA_CONFIG.patch_size} x{CUDA_BATCH}: "
              f"{result['forward_backward_s']['median']:.3f} s per forward+backward")


if __name__ == "__main__":
    main()
