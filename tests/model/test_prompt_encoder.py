"""The prompt branch: automatic mode is exactly the old network; prompts reach the logits locally."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network
from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels

TINY = dict(backbone="vit_tiny", token_size=(4, 16, 16), window_size=(2, 2, 2), adapter_dim=16,
            patch_size=(16, 32, 32), num_classes=3, deep_supervision=False)


def _pair():
    torch.manual_seed(0)
    automatic = build_network(NetworkConfig(**TINY)).eval()
    interactive = build_network(NetworkConfig(prompt_channels=prompt_channels(3), **TINY)).eval()
    missing, unexpected = interactive.load_state_dict(automatic.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("prompt_encoder.") for key in missing)
    return automatic, interactive


def _randomize_prompt_branch(network, seed=1):
    """Random weights, zero biases (a bias would shift every voxel, click or not)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.prompt_encoder.named_parameters():
            scale = 0.0 if name.endswith("bias") else 0.3
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def test_a_network_without_prompts_has_no_new_weights():
    network = build_network(NetworkConfig(**TINY))
    assert network.prompt_encoder is None and not network.is_interactive
    assert not any("prompt" in key for key in network.state_dict())


def test_automatic_mode_is_exactly_the_network_without_prompt_branch():
    automatic, interactive = _pair()
    _randomize_prompt_branch(interactive)
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(automatic(x), interactive(x))
        assert torch.equal(interactive(x), interactive.decode(x, interactive.encode(x)))


def test_a_new_prompt_branch_adds_nothing_and_a_trained_one_acts_near_the_click():
    _, interactive = _pair()
    x = torch.randn(1, 1, 16, 32, 32)
    prompts = torch.zeros(1, prompt_channels(3), 16, 32, 32)
    prompts[0, prompt_channel("positive", 2, 3), 2:5, 2:6, 2:6] = 1.0
    with torch.no_grad():
        assert torch.equal(interactive(x), interactive(x, prompts))  # zero-initialised projections
        _randomize_prompt_branch(interactive)
        features = interactive.encode(x)
        without, with_click = interactive.decode(x, features), interactive.decode(x, features, prompts)
    change = (with_click - without).abs().amax(dim=1)[0]
    # The decoder's InstanceNorms spread a little of any change everywhere; the click's own
    # neighbourhood must still change several times more than the far corner.
    assert change[2:5, 2:6, 2:6].mean() > 4 * change[12:, 24:, 24:].mean()


def test_gradients_reach_the_prompt_branch():
    _, interactive = _pair()
    interactive.train()
    _randomize_prompt_branch(interactive)
    prompts = torch.rand(1, prompt_channels(3), 16, 32, 32)
    interactive(torch.randn(1, 1, 16, 32, 32), prompts).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in interactive.prompt_encoder.parameters())


def test_prompt_errors_are_clear():
    automatic, interactive = _pair()
    x = torch.randn(1, 1, 16, 32, 32)
    with pytest.raises(ValueError, match="no prompt branch"):
        automatic(x, torch.zeros(1, 6, 16, 32, 32))
    with pytest.raises(ValueError, match="prompts of shape"):
        interactive(x, torch.zeros(1, 5, 16, 32, 32))
    with pytest.raises(ValueError, match="not a foreground class"):
        prompt_channel("positive", 3, 3)
    assert [prompt_channel(kind, label, 3) for kind in ("prior", "positive", "negative") for label in (1, 2)] == list(range(6))
