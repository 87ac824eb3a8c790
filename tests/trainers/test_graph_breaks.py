"""``--compile`` sees the training step's forward (network and deep-supervision loss) as ONE
graph: ``torch._dynamo.explain`` finds no graph break. A break splits the compiled step, so
inductor cannot fuse across it and the backward is split the same way; one Python-level
construct that dynamo cannot trace (``math.prod`` of a generator in the window layout was one:
a break in every encoder block) is enough. Tracing only: nothing is compiled here."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss, NetworkLoss

CONFIGS = {
    # Windowed and global blocks, adapters with their depthwise 3D convolution, relative position
    # terms, selective activation checkpointing (the first blocks, one keeping its attention's
    # output through a checkpoint policy; the later ones stored), as the planner turns it on.
    "vit_tiny": NetworkConfig(backbone="vit_tiny", patch_size=(8, 32, 32), token_size=(2, 8, 8), window_size=(2, 2, 2),
                              num_classes=3, adapter_blocks=(0, 3), adapter_dim=8, decoder_channels=(4, 8, 8, 16),
                              activation_checkpointing=True, checkpointed_blocks=2, kept_attention_blocks=(1,)),
    # MBConv stage, patch merging, per-slice window attention with bias tables, the input window.
    "lite_medsam": NetworkConfig(backbone="lite_medsam", patch_size=(2, 48, 64), token_size=(1, 4, 4), num_classes=3,
                                 adapter_blocks=tuple(range(10)), adapter_dim=8, decoder_channels=(8, 16, 32),
                                 input_window=(-2.0, 2.0)),
}


@pytest.mark.parametrize("backbone", sorted(CONFIGS))
def test_training_forward_traces_as_one_graph(backbone):
    config = CONFIGS[backbone]
    torch.manual_seed(0)
    step = NetworkLoss(build_network(config).train(), DeepSupervisionLoss(DiceCrossEntropyLoss(), 3))
    data = torch.randn(2, 1, *config.patch_size)
    target = torch.randint(0, config.num_classes, (2, 1, *config.patch_size))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(data, target)
    assert explanation.graph_break_count == 0, str(explanation)[:4000]
    assert explanation.graph_count == 1
