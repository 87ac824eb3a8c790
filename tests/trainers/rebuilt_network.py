"""A trained network and the one the predictor's loader rebuilds from its checkpoint must predict
the same: the check shared by the tests of network variants."""

from __future__ import annotations

import torch
from torch import nn


def assert_rebuilt_network_predicts_the_same(network: nn.Module, rebuilt: nn.Module) -> None:
    """Both in eval mode on one random patch; the trained network may return deep-supervision outputs."""
    network.eval()
    rebuilt.eval()
    x = torch.randn(1, network.config.in_channels, *network.config.patch_size)
    with torch.no_grad():
        expected = network(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        assert torch.allclose(rebuilt(x), expected, atol=1e-5)
