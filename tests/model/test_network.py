"""3DMedSAM end to end: outputs, gradients, trainable modes, parameter budget."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import MedSAM3D, apply_trainable_mode, build_network, count_parameters

TINY = dict(backbone="vit_tiny", token_size=(4, 16, 16), window_size=(2, 2, 2), adapter_dim=16)


def trainable_names(network) -> set[str]:
    return {name for name, p in network.named_parameters() if p.requires_grad}


def test_vit_tiny_forward_backward_reaches_only_trainable_parameters(sam_checkpoint):
    path, _ = sam_checkpoint("vit_tiny")
    config = NetworkConfig(patch_size=(32, 64, 64), in_channels=1, num_classes=4, adapter_blocks=(2, 3), **TINY)
    network = build_network(config, sam_checkpoint=path)
    x = torch.randn(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(0))

    full, half, quarter = network(x)
    assert full.shape == (1, 4, 32, 64, 64)
    assert half.shape == (1, 4, 16, 32, 32)
    assert quarter.shape == (1, 4, 8, 16, 16)
    (full.square().mean() + half.square().mean() + quarter.square().mean()).backward()

    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # The adapters' up-projections start at zero, so their own gradient is what moves first.
    assert network.encoder.blocks[3].adapter.up.weight.grad.abs().sum() > 0
    assert network.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    print(count_parameters(network))


def test_deep_supervision_can_be_switched_off_after_construction():
    network = build_network(NetworkConfig(patch_size=(16, 32, 32), num_classes=3, **TINY)).eval()
    network.deep_supervision = False
    with torch.no_grad():
        logits = network(torch.randn(1, 1, 16, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 3, 16, 32, 32)


@pytest.mark.parametrize(
    "patch, num_classes, expected_half, expected_quarter",
    [
        ((20, 48, 48), 14, (10, 24, 24), (5, 12, 12)),  # z / 4 is odd: the next level halves in-plane only
        ((12, 48, 32), 1, (6, 24, 16), (3, 12, 8)),
        ((4, 32, 32), 2, (2, 16, 16), (1, 8, 8)),  # token grid one deep
    ],
)
def test_odd_sizes_and_class_counts(patch, num_classes, expected_half, expected_quarter):
    config = NetworkConfig(patch_size=patch, in_channels=2, num_classes=num_classes, **TINY)
    network = build_network(config)
    full, half, quarter = network(torch.randn(1, 2, *patch))
    assert full.shape == (1, num_classes, *patch)
    assert half.shape == (1, num_classes, *expected_half)
    assert quarter.shape == (1, num_classes, *expected_quarter)
    full.mean().backward()


def test_finer_in_plane_tokens():
    config = NetworkConfig(patch_size=(8, 32, 32), token_size=(2, 8, 8), num_classes=3, backbone="vit_tiny")
    full, half, quarter = build_network(config)(torch.randn(1, 1, 8, 32, 32))
    # Tokens 2 deep: the grid is 4 deep, the quarter level 2 deep (its features are pooled onto it).
    assert (full.shape, half.shape, quarter.shape) == ((1, 3, 8, 32, 32), (1, 3, 4, 16, 16), (1, 3, 2, 8, 8))


@pytest.mark.parametrize("mode", ["adapters", "full", "frozen_encoder"])
def test_trainable_modes(sam_checkpoint, mode):
    path, _ = sam_checkpoint("vit_tiny")
    config = NetworkConfig(patch_size=(8, 32, 32), adapter_blocks=(1, 3), trainable=mode, **TINY)
    network = build_network(config, sam_checkpoint=path)
    names = trainable_names(network)
    decoder = {name for name, _ in network.named_parameters() if name.startswith("decoder.")}
    assert decoder <= names
    has_adapters = any(".adapter." in name for name, _ in network.named_parameters())
    assert has_adapters == (mode != "frozen_encoder")
    if mode == "full":
        assert names == {name for name, _ in network.named_parameters()}
        return
    encoder = {name for name in names if name.startswith("encoder.")}
    expected = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "encoder.depth_pos_embed"}
    expected |= {f"encoder.blocks.{i}.attn.rel_pos_d" for i in range(4)}
    expected |= {name for name, _ in network.named_parameters() if ".adapter." in name}
    assert encoder == expected


def test_train_norms_adds_the_layer_norms():
    config = NetworkConfig(patch_size=(8, 32, 32), train_norms=True, **TINY)
    names = trainable_names(build_network(config))
    assert "encoder.blocks.0.norm1.weight" in names and "encoder.blocks.3.norm2.bias" in names
    assert "encoder.blocks.0.attn.qkv.weight" not in names


def test_vit_b_with_adapters_in_every_block_trains_at_most_a_quarter():
    config = NetworkConfig(backbone="vit_b", adapter_blocks=tuple(range(12)))
    with torch.device("meta"):  # parameter counts need no memory
        network = MedSAM3D(config)
    apply_trainable_mode(network)
    counts = count_parameters(network)
    print(f"vit_b, adapters in all 12 blocks, {config.patch_size} patch: {counts}")
    assert counts.trainable_share <= 0.25
    assert 90e6 < counts.total < 100e6  # SAM's vit_b encoder (88.9 M without its neck) plus ours


def test_from_scratch_initialisation_is_not_sams_zeros():
    network = build_network(NetworkConfig(patch_size=(8, 32, 32), trainable="full", **TINY))
    assert network.encoder.pos_embed.std().item() > 0.01
    assert network.encoder.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_input_errors_are_clear():
    network = build_network(NetworkConfig(patch_size=(8, 32, 32), in_channels=2, **TINY))
    with pytest.raises(ValueError, match=r"expected input \(B, 2"):
        network(torch.randn(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the token size"):
        network(torch.randn(1, 2, 8, 40, 32))


def test_configuration_rules():
    with pytest.raises(ValueError, match=r"patch_size \(8, 40, 32\) is not a multiple of the token size"):
        NetworkConfig(patch_size=(8, 40, 32), **TINY)
    assert NetworkConfig(trainable="frozen_encoder", adapter_blocks=(0, 1), backbone="vit_tiny").adapter_blocks == ()
    assert NetworkConfig(trainable="adapters", adapter_blocks=(1, 0), backbone="vit_tiny").adapter_blocks == (0, 1)


def test_parameter_counts_read_well():
    counts = count_parameters(torch.nn.Linear(1000, 1000))
    assert counts.trainable == counts.total == 1_001_000
    assert str(counts) == "1.00 M of 1.00 M parameters trainable (100.0%)"


def test_runs_on_other_sizes_of_the_same_kind():
    """Inference may see a whole small volume instead of the training patch."""
    network = build_network(NetworkConfig(patch_size=(16, 64, 64), num_classes=3, **TINY)).eval()
    network.deep_supervision = False
    with torch.no_grad():
        assert network(torch.randn(1, 1, 8, 96, 48)).shape == (1, 3, 8, 96, 48)
