"""The decoder is built from :mod:`nnsam3d.model.decoder_layout`'s list, which the memory and
compute models count: every learned layer of the built decoder is a layer of the list, in order,
with its channels, kernel and stride, and the list's parameters are the decoder's."""

from __future__ import annotations

import pytest
from torch import nn

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.decoder3d import Decoder3D
from nnsam3d.model.decoder_layout import decoder_layout

CONFIGS = {
    "vit_tiny": NetworkConfig(backbone="vit_tiny", num_classes=4, patch_size=(24, 64, 64), token_size=(4, 16, 16),
                              window_size=(2, 4, 4), decoder_channels=(16, 32, 64, 128)),
    "odd_shapes": NetworkConfig(backbone="vit_tiny", num_classes=3, patch_size=(10, 40, 48), token_size=(2, 8, 8),
                                window_size=(4, 4, 4), decoder_channels=(8, 16, 32, 64)),
    "thin_tokens": NetworkConfig(backbone="vit_tiny", num_classes=2, patch_size=(6, 64, 64), token_size=(1, 16, 16),
                                 window_size=(2, 4, 4), decoder_channels=(8, 16, 32, 64)),
    "lite_medsam": NetworkConfig(backbone="lite_medsam", num_classes=3, patch_size=(4, 64, 64), token_size=(1, 4, 4)),
    "no norm at full resolution": NetworkConfig(backbone="vit_tiny", num_classes=3, patch_size=(10, 40, 48),
                                                token_size=(2, 8, 8), window_size=(4, 4, 4),
                                                decoder_channels=(8, 16, 32, 64), norm_at_full_resolution=False),
}


def learned_layers(decoder: nn.Module) -> list[nn.Module]:
    return [m for m in decoder.modules() if isinstance(m, (nn.Linear, nn.Conv3d, nn.ConvTranspose3d))]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_built_decoder_is_the_list(name):
    config = CONFIGS[name]
    spec = get_backbone(config.backbone)
    strides = spec.feature_strides(config.token_size)
    layout = decoder_layout(config, spec.feature_dims, strides)
    decoder = Decoder3D(spec.feature_dims, strides, config)
    modules = learned_layers(decoder)
    assert len(modules) == len(layout.layers)
    for module, layer in zip(modules, layout.layers):
        if isinstance(module, nn.Linear):
            assert layer.kind == "neck"
            assert (module.in_features, module.out_features) == (layer.in_channels, layer.out_channels)
            continue
        assert isinstance(module, nn.ConvTranspose3d) == (layer.kind in ("lateral", "upsampler")), layer
        assert (module.in_channels, module.out_channels) == (layer.in_channels, layer.out_channels), layer
        assert tuple(module.kernel_size) == layer.kernel and tuple(module.stride) == layer.stride, layer
    assert sum(p.numel() for p in decoder.parameters()) == sum(layer.parameters for layer in layout.layers)
    norms = sum(isinstance(m, nn.InstanceNorm3d) for m in decoder.modules())
    assert norms == sum(layer.normed for layer in layout.layers)
    assert sum(isinstance(m, nn.LeakyReLU) for m in decoder.modules()) == sum(layer.activated for layer in layout.layers)
