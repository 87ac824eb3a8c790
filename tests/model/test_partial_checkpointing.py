"""Selective activation checkpointing: only the first encoder blocks (``checkpointed_blocks``),
and checkpointed blocks that keep their attention's output (``kept_attention_blocks``).

Every checkpointed block runs its forward a second time in backward, except what it keeps. Proved
here: the configuration's rules and schema version; that exactly the first blocks are recomputed
and kept attention is not, while the step computes the same loss and gradients; that what kept
attention stores is estimated to the byte; and that the planner's choice fits with the least
recompute. The memory and compute models are checked against
measured steps in ``test_memory_model``, ``test_step_memory`` and ``test_compute_model``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from nnsam3d.model import config as config_module
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.memory_model import SAFETY_MARGIN, estimate_training_memory
from nnsam3d.model.network import build_network
from nnsam3d.schemas.plans import Plans

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = dict(backbone="vit_tiny", patch_size=(8, 32, 32), token_size=(2, 16, 16), window_size=(2, 1, 1),
            num_classes=3, decoder_channels=(8, 16, 32, 64), adapter_blocks=(0, 1, 2, 3), trainable="full")


def test_the_first_blocks_are_checkpointed_and_the_field_is_schema_version_3(monkeypatch):
    partial = NetworkConfig(backbone="vit_b", activation_checkpointing=True, checkpointed_blocks=5)
    assert [partial.is_checkpointed(block) for block in range(12)] == [True] * 5 + [False] * 7
    assert partial.checkpointed_block_count == 5
    content = partial.to_json()
    assert content["schema_version"] == 3 and content["checkpointed_blocks"] == 5
    assert NetworkConfig.from_json(content) == partial
    # Every block is the plain checkpointed configuration, still readable by an older nnsam3d.
    every = NetworkConfig(backbone="vit_b", activation_checkpointing=True, checkpointed_blocks=12)
    assert every == NetworkConfig(backbone="vit_b", activation_checkpointing=True)
    assert every.checkpointed_blocks is None and every.to_json()["schema_version"] == 1
    assert every.checkpointed_block_count == 12 and NetworkConfig(backbone="vit_b").checkpointed_block_count == 0
    # An nnsam3d that reads up to version 2 refuses the partial configuration instead of
    # checkpointing every block (which may not fit where the plan was made for fewer).
    monkeypatch.setattr(config_module, "NETWORK_CONFIG_SCHEMA_VERSION", 2)
    with pytest.raises(ValueError, match="schema version 3.*Update nnsam3d"):
        NetworkConfig.from_json(content)


@pytest.mark.parametrize("changes, message", [
    (dict(checkpointed_blocks=3), "needs activation_checkpointing"),
    (dict(activation_checkpointing=True, checkpointed_blocks=0), "must be 1..12"),
    (dict(activation_checkpointing=True, checkpointed_blocks=13), "must be 1..12"),
    (dict(backbone="lite_medsam", token_size=(1, 4, 4), patch_size=(2, 48, 64), activation_checkpointing=True, checkpointed_blocks=2),
     "all its blocks or none"),
])
def test_impossible_counts_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**{"backbone": "vit_b", **changes})


def block_calls_in_one_step(config: NetworkConfig, state: dict | None = None):
    """(forward calls per encoder block over a training step's forward and backward, loss,
    gradients by name) of ``build_network(config)``, with weights ``state`` if given."""
    torch.manual_seed(0)
    network = build_network(config).train()
    if state is not None:
        network.load_state_dict(state)
    calls = Counter()
    for index, block in enumerate(network.encoder.blocks):
        # A pre-hook: the recompute stops before the block returns (PyTorch stops early).
        block.register_forward_pre_hook(lambda module, args, index=index: calls.update([index]))
    volume = torch.randn(2, 1, *config.patch_size, generator=torch.Generator().manual_seed(1))
    loss = sum(output.float().square().mean() for output in network(volume))
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}
    return [calls[i] for i in range(len(network.encoder.blocks))], loss.item(), gradients, network.state_dict()


def test_only_the_first_blocks_run_twice_and_the_step_is_the_same():
    plain_calls, plain_loss, plain_gradients, state = block_calls_in_one_step(NetworkConfig(**TINY))
    assert plain_calls == [1, 1, 1, 1]
    for count in (1, 3):
        config = NetworkConfig(**TINY, activation_checkpointing=True, checkpointed_blocks=count)
        calls, loss, gradients, _ = block_calls_in_one_step(config, state)
        assert calls == [2] * count + [1] * (4 - count)
        assert loss == plain_loss
        assert gradients.keys() == plain_gradients.keys()
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, plain_gradients[name], rtol=1e-5, atol=1e-7, msg=name)


def fused_attention_calls_in_one_step(config: NetworkConfig, state: dict) -> tuple[int, float, dict]:
    """(fused attention kernel calls over a training step, loss, gradients by name)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from nnsam3d.model.encoder3d import FUSED_ATTENTION_KERNELS

    class CountAttention(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountAttention.calls += func in FUSED_ATTENTION_KERNELS
            return func(*args, **(kwargs or {}))

    network = build_network(config).train()
    network.load_state_dict(state)
    volume = torch.randn(2, 1, *config.patch_size, generator=torch.Generator().manual_seed(1))
    with CountAttention():
        loss = sum(output.float().square().mean() for output in network(volume))
        loss.backward()
    gradients = {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}
    return CountAttention.calls, loss.item(), gradients


def test_blocks_that_keep_their_attention_do_not_run_it_again_and_the_step_is_the_same():
    _, plain_loss, plain_gradients, state = block_calls_in_one_step(NetworkConfig(**TINY))
    checkpointed = NetworkConfig(**TINY, activation_checkpointing=True)
    calls = {}
    for kept in ((), (1, 3), (0, 1, 2, 3)):
        count, loss, gradients = fused_attention_calls_in_one_step(checkpointed.replace(kept_attention_blocks=kept), state)
        calls[kept] = count
        assert loss == plain_loss
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, plain_gradients[name], rtol=1e-5, atol=1e-7, msg=name)
    # Forward once per block, backward's recompute once per block that does not keep it (the
    # backward kernel is another operation).
    assert calls == {(): 8, (1, 3): 6, (0, 1, 2, 3): 4}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_what_a_kept_attention_stores_is_estimated_to_the_byte(precision):
    """Live storage after a training forward (everything backward will need, nothing else):
    keeping the attention in blocks 1 and 3, or all four, adds exactly the estimate."""
    from nnsam3d.model.live_memory import LiveStorageTracker

    def live_after_forward(config: NetworkConfig) -> int:
        torch.manual_seed(0)
        network = build_network(config).train()
        volume = torch.randn(2, 1, *config.patch_size)
        with LiveStorageTracker([*network.parameters(), volume]) as tracker:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                outputs = network(volume)
            live = tracker.current
        del outputs
        return live

    base = NetworkConfig(**{**TINY, "patch_size": (16, 64, 64), "token_size": (4, 16, 16), "window_size": (2, 2, 2)},
                         activation_checkpointing=True)
    measured_base = live_after_forward(base)
    estimated_base = estimate_training_memory(base, 2, precision).activations
    for kept in ((1, 3), (0, 1, 2, 3)):
        config = base.replace(kept_attention_blocks=kept)
        added = live_after_forward(config) - measured_base
        assert added > 0
        assert estimate_training_memory(config, 2, precision).activations - estimated_base == added


@pytest.mark.parametrize("changes, message", [
    (dict(kept_attention_blocks=(2,)), "not checkpointed blocks"),
    (dict(activation_checkpointing=True, checkpointed_blocks=2, kept_attention_blocks=(1, 5)), r"\[5\] are not checkpointed"),
    (dict(backbone="lite_medsam", token_size=(1, 4, 4), patch_size=(2, 48, 64), activation_checkpointing=True,
          kept_attention_blocks=(1,)), "cannot keep attention"),
])
def test_kept_attention_outside_the_checkpointed_blocks_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**{"backbone": "vit_b", **changes})


def test_kept_attention_is_schema_version_3_and_round_trips():
    config = NetworkConfig(backbone="vit_b", activation_checkpointing=True, kept_attention_blocks=(11, 2, 5, 8))
    assert config.kept_attention_blocks == (2, 5, 8, 11)
    content = config.to_json()
    assert content["schema_version"] == 3 and content["kept_attention_blocks"] == [2, 5, 8, 11]
    assert NetworkConfig.from_json(content) == config


@pytest.fixture(scope="module")
def ct_plans():
    """The planner's vit_b plans of a typical abdominal CT at a few GPU memory budgets."""
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchmark_support import typical_abdominal_ct_plans
    finally:
        sys.path.remove(str(BENCHMARKS))
    return {gb: typical_abdominal_ct_plans(slices=300, gpu_memory_gb=gb, backbone="vit_b")[0]
            for gb in (8, 24, 32, 40, 48)}


def test_the_planner_chooses_the_checkpointing_that_fits_with_the_least_recompute(ct_plans):
    """Against every number of checkpointed blocks, each with the attention kept in any first
    blocks of two orders (the planner's, global blocks first, and plain index order): nothing that
    fits the plan's memory recomputes less than what the planner chose."""
    selective = {gb: plans for gb, plans in ct_plans.items()
                 if plans.network.checkpointed_blocks is not None or plans.network.kept_attention_blocks}
    assert len(selective) >= 3, "too few selective plans: the test would prove little"
    global_blocks = (2, 5, 8, 11)
    for gb, plans in selective.items():
        network, usable, batch = plans.network, int(SAFETY_MARGIN * plans.memory.target_bytes), plans.batch_size
        chosen = estimate_training_flops(network, batch).parts["recompute"]
        assert estimate_training_memory(network, batch).total <= usable
        assert plans.compute.flops_per_step == pytest.approx(estimate_training_flops(network, batch).total)
        for count in range(1, 13):
            for order in (sorted(range(count), key=lambda b: (b not in global_blocks, b)), list(range(count))):
                for kept in range(count + 1):
                    other = network.replace(checkpointed_blocks=count, kept_attention_blocks=order[:kept])
                    if estimate_training_memory(other, batch).total <= usable:
                        assert estimate_training_flops(other, batch).parts["recompute"] >= chosen, (gb, count, order[:kept])
        whole = network.replace(checkpointed_blocks=None, kept_attention_blocks=())
        assert estimate_training_flops(network, batch).total < estimate_training_flops(whole, batch).total
        assert "encoder block" in plans.explanation and "least recompute" in plans.explanation
        if network.kept_attention_blocks:
            assert f"blocks {', '.join(map(str, network.kept_attention_blocks))} keep their attention" in plans.explanation
        assert Plans.from_json(plans.to_json()).network == network


def test_a_larger_budget_never_recomputes_more_at_the_same_patch(ct_plans):
    budgets = sorted(ct_plans)
    for smaller, larger in zip(budgets, budgets[1:]):
        a, b = ct_plans[smaller], ct_plans[larger]
        if a.network.patch_size == b.network.patch_size and a.batch_size == b.batch_size:
            recompute = [estimate_training_flops(p.network, p.batch_size).parts.get("recompute", 0.0) for p in (a, b)]
            assert recompute[1] <= recompute[0], (smaller, larger)
