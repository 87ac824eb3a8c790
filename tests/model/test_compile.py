"""``--compile``: the compiled network computes what the eager one computes."""

from __future__ import annotations

import shutil

import pytest
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network, compile_network

C_COMPILER = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.slow  # inductor compiles C++ kernels for a minute or more on 2 cores
@pytest.mark.skipif(C_COMPILER is None, reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none found")
def test_compiled_vit_tiny_equals_eager():
    config = NetworkConfig(backbone="vit_tiny", patch_size=(8, 32, 32), token_size=(2, 8, 8), window_size=(2, 2, 2),
                           num_classes=3, adapter_blocks=(0, 3), adapter_dim=8, decoder_channels=(4, 8, 8, 16))
    torch.manual_seed(0)
    network = build_network(config).eval()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "adapter.up" in name or "rel_pos_d" in name:  # zero at initialisation: make them count
                parameter.normal_(std=0.1)
    x = torch.randn(2, 1, *config.patch_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = network(x)
        compiled = compile_network(network)(x)
    assert len(compiled) == len(eager) == 3
    for ours, reference in zip(compiled, eager):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
