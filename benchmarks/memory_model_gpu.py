"""Compare ``estimate_training_memory`` with ``torch.cuda.max_memory_allocated`` on a GPU.

For vit_b (adapters in every block) at two patch sizes, one full training step (bf16 autocast
forward, a stand-in loss, backward, AdamW step) is run after a warm-up step, and the peak
allocated memory of that step is compared with the estimate's total. Results, with the GPU's
name, go to ``benchmarks/results/memory_model_gpu.json``.

The loss is a stand-in for the trainer's (cross-entropy plus soft Dice on every
deep-supervision output, in fp32), of the size the memory model's workspace allows for. Weights
are random: memory does not depend on their values.

    python benchmarks/memory_model_gpu.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.model.network import build_network

RESULTS = Path(__file__).with_name("results")
PRECISION = "bf16"
BATCH = 2
CONFIGS = [
    NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12)), patch_size=(32, 128, 128)),
    NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12)), patch_size=(64, 192, 192)),
]


def stand_in_loss(outputs: tuple[torch.Tensor, ...], labels: list[torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for logits, target in zip(outputs, labels):
        logits = logits.float()
        probabilities = logits.softmax(1)
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
        axes = (2, 3, 4)
        dice = (2 * (probabilities * one_hot).sum(axes) + 1) / (probabilities.sum(axes) + one_hot.sum(axes) + 1)
        total = total + F.cross_entropy(logits, target) + (1 - dice.mean())
    return total


def measure(config: NetworkConfig) -> dict:
    torch.cuda.empty_cache()
    network = build_network(config).cuda().train()
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(BATCH, config.in_channels, *config.patch_size, device="cuda")
    with torch.no_grad():
        shapes = [o.shape[2:] for o in network(x)]
    labels = [torch.randint(0, config.num_classes, (BATCH, *shape), device="cuda") for shape in shapes]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = network(x)
        stand_in_loss(outputs, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates AdamW's state, cuDNN picks its algorithms
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    estimate = estimate_training_memory(config, BATCH, PRECISION)
    del network, optimizer, x, labels
    return {
        "config": config.to_json(),
        "batch_size": BATCH,
        "precision": PRECISION,
        "estimate_bytes": estimate.breakdown(),
        "measured_peak_bytes": peak,
        "measured_before_step_bytes": before,
        "estimate_over_measured": estimate.total / peak,
    }


def main() -> int:
    if not torch.cuda.is_available():
        print(
            "memory_model_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured.",
            file=sys.stderr,
        )
        return 2
    results = {
        "gpu": torch.cuda.get_device_name(),
        "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "runs": [],
    }
    for config in CONFIGS:
        run = measure(config)
        results["runs"].append(run)
        estimate, peak = run["estimate_bytes"]["total"] / 2**30, run["measured_peak_bytes"] / 2**30
        print(f"{results['gpu']}: vit_b {config.patch_size} x{BATCH}: estimate {estimate:.2f} GiB, "
              f"measured peak {peak:.2f} GiB (ratio {run['estimate_over_measured']:.2f})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_model_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
