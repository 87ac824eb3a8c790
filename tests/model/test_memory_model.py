"""The memory model against what autograd really saves, and against the real parameter counts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from nnsam3d.model import attention3d
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import activation_breakdown, estimate_training_memory
from nnsam3d.model.network import MedSAM3D, apply_trainable_mode, build_network, count_parameters
from nnsam3d.model.saved_tensors import measure_saved_tensors

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TOLERANCE = 0.01
"""Relative error allowed between the fp32 estimate and the measurement; the estimate currently
matches to the byte, so this only leaves room for harmless changes in what PyTorch saves."""
TINY = dict(
    backbone="vit_tiny", patch_size=(16, 64, 64), token_size=(4, 16, 16), window_size=(2, 2, 2),
    num_classes=3, adapter_dim=16,
)

CPU_CONFIGS = {
    "adapters in all blocks": dict(adapter_blocks=(0, 1, 2, 3)),
    "adapters in the last block": dict(adapter_blocks=(3,)),
    "no adapters (frozen encoder)": dict(trainable="frozen_encoder", adapter_blocks=(0, 1, 2, 3)),
    "full, trainable norms": dict(trainable="full", adapter_blocks=(0, 1, 2, 3), train_norms=True),
    "checkpointing": dict(adapter_blocks=(0, 1, 2, 3), activation_checkpointing=True),
    "checkpointing, full": dict(trainable="full", activation_checkpointing=True),
    "first 2 of 4 blocks checkpointed": dict(adapter_blocks=(0, 1, 2, 3), activation_checkpointing=True,
                                             checkpointed_blocks=2),
    "first block checkpointed, full": dict(trainable="full", activation_checkpointing=True, checkpointed_blocks=1),
    "no norm at full resolution": dict(adapter_blocks=(0, 3), norm_at_full_resolution=False),
    "windows as large as the grid": dict(window_size=(8, 8, 8), adapter_blocks=(1,)),
    "padded windows": dict(patch_size=(24, 80, 48), window_size=(4, 3, 2), adapter_blocks=(0, 2)),
    "tokens of 8, deep grid": dict(
        patch_size=(16, 32, 32), token_size=(2, 8, 8), window_size=(4, 2, 2), adapter_blocks=(0, 3)
    ),
}


def fused_attention_on_meta(query, key, value, scale):
    """SDPA as its fused CPU kernel runs it. On the meta device SDPA always picks its composite
    (math) path, which saves the N x N map; the CPU kernel, which the network runs on real CPU
    tensors, has a meta implementation and saves what CUDA's fused kernels save."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)[0]


def encoder_share(breakdown: dict[str, int]) -> int:
    return breakdown["input"] + sum(v for k, v in breakdown.items() if k.startswith("block_"))


@pytest.mark.parametrize("name", list(CPU_CONFIGS))
def test_activations_match_saved_tensors_on_cpu(name):
    config = NetworkConfig(**{**TINY, **CPU_CONFIGS[name]})
    batch = 2
    network = build_network(config)
    x = torch.randn(batch, config.in_channels, *config.patch_size)

    measured = measure_saved_tensors(network, lambda: network(x))
    encoder_measured = measure_saved_tensors(network.encoder, lambda: network.encoder(x))
    estimate = estimate_training_memory(config, batch, "fp32")
    encoder_estimate = encoder_share(activation_breakdown(config, batch, "fp32"))

    error = estimate.activations / measured - 1
    encoder_error = encoder_estimate / encoder_measured - 1
    print(f"{name}: measured {measured / 2**20:.2f} MiB, relative error {error:+.2%} "
          f"(encoder alone {encoder_error:+.2%})")
    assert abs(error) < TOLERANCE
    assert abs(encoder_error) < TOLERANCE  # the decoder's share must not hide encoder errors

    counts = count_parameters(network)
    assert estimate.parameters == 4 * counts.total
    assert estimate.gradients == 4 * counts.trainable
    assert estimate.optimizer_state == 8 * counts.trainable


@pytest.mark.parametrize(
    "extra",
    [
        dict(adapter_blocks=tuple(range(12))),
        dict(trainable="full", patch_size=(16, 192, 192), window_size=(2, 14, 14)),
        dict(adapter_blocks=(8, 9, 10, 11), activation_checkpointing=True, patch_size=(48, 160, 160)),
        dict(adapter_blocks=tuple(range(12)), activation_checkpointing=True, checkpointed_blocks=5,
             patch_size=(48, 160, 160)),
    ],
)
def test_activations_match_saved_tensors_for_vit_b_on_the_meta_device(extra, monkeypatch):
    """vit_b at realistic patches, measured on the meta device (shapes only, no arithmetic)."""
    monkeypatch.setattr(attention3d.F, "scaled_dot_product_attention", fused_attention_on_meta)
    config = NetworkConfig(backbone="vit_b", num_classes=14, **extra)
    with torch.device("meta"):
        network = MedSAM3D(config)
        apply_trainable_mode(network)
        x = torch.empty(2, 1, *config.patch_size)
        measured = measure_saved_tensors(network, lambda: network(x))
    estimate = estimate_training_memory(config, 2, "fp32")
    error = estimate.activations / measured - 1
    print(f"vit_b {extra}: measured {measured / 2**30:.2f} GiB, relative error {error:+.2%}")
    assert abs(error) < TOLERANCE
    assert estimate.parameters == 4 * count_parameters(network).total


def test_estimate_is_fast_and_consistent():
    config = NetworkConfig(backbone="vit_h", adapter_blocks=tuple(range(32)), patch_size=(64, 256, 256))
    start = time.perf_counter()
    for _ in range(50):
        estimate = estimate_training_memory(config, 2, "bf16")
    per_call = (time.perf_counter() - start) / 50
    assert per_call < 0.005, per_call
    assert estimate.activations == sum(activation_breakdown(config, 2, "bf16").values())
    # The parameter-driven terms against the real network (meta device: no memory), for a
    # backbone and precision the CPU comparisons do not cover.
    with torch.device("meta"):
        network = MedSAM3D(config)
    apply_trainable_mode(network)
    counts = count_parameters(network)
    assert (estimate.parameters, estimate.gradients, estimate.optimizer_state) == (
        4 * counts.total, 4 * counts.trainable, 8 * counts.trainable
    )


def test_estimate_grows_with_batch_and_shrinks_with_checkpointing():
    config = NetworkConfig(backbone="vit_b", adapter_blocks=tuple(range(12)))
    one, two = (estimate_training_memory(config, b, "bf16") for b in (1, 2))
    weight_copies = activation_breakdown(config, 1, "bf16")["weight_copies"]  # autocast's, per step
    assert weight_copies > 0
    assert two.activations - one.activations == pytest.approx(one.activations - weight_copies, rel=0.01)
    assert two.parameters == one.parameters

    def blocks(c: NetworkConfig) -> int:
        return sum(v for k, v in activation_breakdown(c, 2, "bf16").items() if k.startswith("block_"))

    checkpointing = config.replace(activation_checkpointing=True)
    assert blocks(checkpointing) < 0.2 * blocks(config)
    # Which transient a checkpointed step peaks on is checked against a measured step in
    # test_step_memory.py (test_a_checkpointed_step_peaks_on_the_recomputed_block_when_it_is_larger).
    full = estimate_training_memory(config.replace(trainable="full"), 2, "bf16")
    assert full.optimizer_state > 10 * two.optimizer_state


def test_bad_arguments():
    config = NetworkConfig(backbone="vit_tiny")
    with pytest.raises(ValueError, match="precision"):
        estimate_training_memory(config, 2, "int8")
    with pytest.raises(ValueError, match="batch_size"):
        estimate_training_memory(config, 0)


def test_the_estimate_covers_the_peaks_measured_on_a_gpu_within_five_percent(monkeypatch):
    """The CUDA allowance against figures it cannot have produced: ``torch.cuda.max_memory_allocated``
    of real bf16 training steps of the planner's vit_b plans on an H200
    (``benchmarks/results/gpu_checks.json``). The estimate must cover every measured peak, by at
    most 5%: without the library workspace or the measured CUDA excess it falls below them, with
    twice the excess it wastes a tenth of the card."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from benchmark_support import typical_abdominal_ct_plans

    measured_runs = json.loads((BENCHMARKS / "results" / "gpu_checks.json").read_text())["plans"]
    compared = []
    for run in measured_runs:
        plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=run["budget_gb"])
        if list(plans.patch_size) != run["patch_size"] or plans.batch_size != run["batch_size"]:
            continue  # the planner chooses another plan today: not the network that was measured
        # As gpu_checks.py trained it: adapters, and the checkpointing of its day (runs that
        # predate checkpointed_blocks checkpointed every block).
        config = plans.network.replace(trainable="adapters", activation_checkpointing=run["activation_checkpointing"],
                                       checkpointed_blocks=run.get("checkpointed_blocks"))
        ratio = estimate_training_memory(config, run["batch_size"], run["precision"]).total / run["max_memory_allocated"]
        compared.append((run["budget_gb"], round(ratio, 4)))
        assert 1.0 <= ratio <= 1.05, (run["budget_gb"], ratio)
    print(f"estimate / measured on the GPU: {compared}")
    assert len(compared) >= 2, "measure the planner's plans on a GPU again: benchmarks/gpu_checks.py"
