"""Optimiser groups, warm-up + decay schedule and the update step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnsam3d.trainers.optimization import (
    Optimization,
    WarmupDecaySchedule,
    build_optimizer,
    fused_adamw_for,
    precision_for,
    trainable_parameter_groups,
)


def _network() -> nn.Module:
    network = nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 2, 1))
    network[0].requires_grad_(False)
    return network


def test_only_trainable_parameters_reach_the_optimiser_and_1d_ones_get_no_decay():
    network = _network()
    decay, no_decay = trainable_parameter_groups(network, 0.01)
    assert {id(p) for p in decay["params"]} == {id(network[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(network[1].weight), id(network[1].bias), id(network[2].bias)}
    assert no_decay["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainable_parameter_groups(nn.Linear(2, 2).requires_grad_(False), 0.01)


def test_adamw_is_fused_when_every_trained_tensor_is_on_a_gpu_and_the_fused_update_is_adamw():
    cuda = type("Tensor", (), {"device": torch.device("cuda")})  # the rule reads only the device type
    assert fused_adamw_for([cuda(), cuda()]) is True
    assert fused_adamw_for([cuda(), torch.zeros(1)]) is None  # a mixed placement: PyTorch decides
    assert fused_adamw_for([torch.zeros(1)]) is None and fused_adamw_for([torch.empty(1, device="meta")]) is None
    assert build_optimizer(_network(), 1e-2, 0.01).defaults["fused"] is None  # CPU: as before
    # The fused kernel (CPU here, as on a GPU) updates exactly as the per-tensor loop, groups and
    # decay included, over a few steps.
    networks = [_network(), _network()]
    networks[1].load_state_dict(networks[0].state_dict())
    optimizers = [torch.optim.AdamW(trainable_parameter_groups(network, 0.1), lr=1e-2, **options)
                  for network, options in zip(networks, ({"fused": True}, {"foreach": False}))]
    for step in range(3):
        x = torch.randn(2, 1, 5, 5, 5, generator=torch.Generator().manual_seed(step))
        for network, optimizer in zip(networks, optimizers):
            optimizer.zero_grad()
            network(x).square().mean().backward()
            optimizer.step()
    for fused, reference in zip(networks[0].parameters(), networks[1].parameters()):
        torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-7)


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    schedule = WarmupDecaySchedule(optimizer, peak=1e-3, total_steps=100, warmup_fraction=0.1)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert rates[0] == pytest.approx(1e-3 / 11)
    assert rates[:10] == sorted(rates[:10]) and rates[10] == pytest.approx(1e-3)
    assert rates[10:] == sorted(rates[10:], reverse=True) and rates[-1] < 2e-5
    cosine = WarmupDecaySchedule(optimizer, 1e-3, 100, 0.0, kind="cosine")
    assert cosine.learning_rate(50) == pytest.approx(5e-4)
    # Extending the schedule continues from the current step on the longer run.
    schedule.resize(200)
    assert schedule.step_count == 100 and 0 < schedule.current < 1e-3


def test_one_step_changes_trainable_weights_only_and_advances_the_schedule():
    torch.manual_seed(0)
    network = _network()
    frozen = network[0].weight.clone()
    trained = network[2].weight.clone()
    optimizer = build_optimizer(network, 1e-2, 0.01)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 1e-2, 10, 0.0),
                                precision_for(torch.device("cpu")))
    loss = network(torch.randn(2, 1, 5, 5, 5)).square().mean()
    optimization.step(loss)
    assert torch.equal(network[0].weight, frozen)
    assert not torch.equal(network[2].weight, trained)
    assert optimization.schedule.step_count == 1
    assert precision_for(torch.device("cpu")).name == "fp32"


def test_gradients_are_clipped_to_the_configured_norm():
    network = nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 0.0, 10, 0.0),
                                precision_for(torch.device("cpu")), clip_norm=1.0)
    optimization.step(1e6 * network(torch.ones(1, 4)).sum())
    assert network.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
