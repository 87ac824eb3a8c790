"""Compare ``estimate_training_memory`` with ``torch.cuda.max_memory_allocated`` on a GPU.

For vit_b (adapters in every block) at two patch sizes, one full training step (bf16 autocast
forward and loss, backward, AdamW step) is run after a warm-up step, and the peak allocated
memory of that step is compared with the estimate's total. Results, with the GPU's name, go to
``benchmarks/results/memory_model_gpu.json``.

The loss is the trainer's own (``nnSAM3DTrainer.build_loss``: Dice + cross-entropy, weighted
over the three deep-supervision outputs) on one int16 label volume at the patch size, as the
data loader delivers it; the loss resizes it to each output. Weights and labels are random:
memory does not depend on their values.

    python benchmarks/memory_model_gpu.py
"""

from __future__ import annotations

import sys

import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.model.network import build_network
from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss

from benchmark_support import environment, write_result

PRECISION = "bf16"
BATCH = 2
CONFIGS = [
    NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12)), patch_size=(32, 128, 128)),
    NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12)), patch_size=(64, 192, 192)),
]


def measure(config: NetworkConfig) -> dict:
    torch.cuda.empty_cache()
    network = build_network(config).cuda().train()
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    loss = DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS)
    x = torch.randn(BATCH, config.in_channels, *config.patch_size, device="cuda")
    target = torch.randint(0, config.num_classes, (BATCH, 1, *config.patch_size), device="cuda", dtype=torch.int16)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss(network(x), target).backward()
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
    del network, optimizer, x, target
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
    gpu = torch.cuda.get_device_name()
    results = {
        "environment": {
            **environment(),
            "gpu": gpu,
            "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
            "cuda": torch.version.cuda,
        },
        "runs": [],
    }
    for config in CONFIGS:
        run = measure(config)
        results["runs"].append(run)
        estimate, peak = run["estimate_bytes"]["total"] / 2**30, run["measured_peak_bytes"] / 2**30
        print(f"{gpu}: vit_b {config.patch_size} x{BATCH}: estimate {estimate:.2f} GiB, "
              f"measured peak {peak:.2f} GiB (ratio {run['estimate_over_measured']:.2f})")
    write_result("memory_model_gpu.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
