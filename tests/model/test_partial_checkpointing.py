"""Activation checkpointing of only the first encoder blocks (``NetworkConfig.checkpointed_blocks``).

The planner checkpoints as few blocks as fit: every checkpointed block runs its forward a second
time in backward. Proved here: the configuration's rules and schema version, that exactly the
first blocks are recomputed while the step computes the same loss and gradients, and that the
planner's choice is the fewest blocks that fit. The memory and compute models are checked against
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


@pytest.fixture(scope="module")
def ct_plans():
    """The planner's vit_b plans of a typical abdominal CT at a few GPU memory budgets."""
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchmark_support import typical_abdominal_ct_plans
    finally:
        sys.path.remove(str(BENCHMARKS))
    return {gb: typical_abdominal_ct_plans(slices=300, gpu_memory_gb=gb, backbone="vit_b")[0] for gb in (8, 24, 32, 40)}


def test_the_planner_checkpoints_the_fewest_blocks_that_fit(ct_plans):
    partial = {gb: plans for gb, plans in ct_plans.items() if plans.network.checkpointed_blocks is not None}
    assert partial, "no budget gave a partially checkpointed plan: the test would prove nothing"
    for gb, plans in partial.items():
        network, usable = plans.network, int(SAFETY_MARGIN * plans.memory.target_bytes)
        count = network.checkpointed_blocks
        assert estimate_training_memory(network, plans.batch_size).total <= usable
        fewer = network.replace(checkpointed_blocks=count - 1) if count > 1 else network.replace(
            activation_checkpointing=False, checkpointed_blocks=None)
        assert estimate_training_memory(fewer, plans.batch_size).total > usable, gb
        # What it buys: less recompute than checkpointing every block, said in the plan.
        every = network.replace(checkpointed_blocks=None)
        assert estimate_training_flops(network, plans.batch_size).total < estimate_training_flops(every, plans.batch_size).total
        assert plans.compute.flops_per_step == pytest.approx(estimate_training_flops(network, plans.batch_size).total)
        assert f"on in the first {count} of 12 encoder blocks" in plans.explanation
        assert Plans.from_json(plans.to_json()).network == network


def test_a_larger_budget_never_checkpoints_more_blocks_of_the_same_patch(ct_plans):
    budgets = sorted(ct_plans)
    for smaller, larger in zip(budgets, budgets[1:]):
        a, b = ct_plans[smaller].network, ct_plans[larger].network
        if a.patch_size == b.patch_size and ct_plans[smaller].batch_size == ct_plans[larger].batch_size:
            assert b.checkpointed_block_count <= a.checkpointed_block_count, (smaller, larger)
