"""Multi-scale 3D decoder: encoder tokens of four depths plus a light stem on the input.

Built from the layer list of :mod:`nnsam3d.model.decoder_layout` (the list the memory and compute
models count):

* **Necks**: each feature block's tokens ``(B, Z', H, W, D)`` -> ``Linear(D, c_neck)``,
  InstanceNorm, LeakyReLU at the token grid (``c_neck = decoder_channels[-1]``); then a
  transposed convolution (kernel = stride = the integer ratio) brings it to the decoder level
  it joins: the deepest block joins the coarsest level, the others one level finer each (for
  tokens of 16 in-plane: 1/8, 1/4, 1/2). Along an axis where that level is coarser than the
  token grid (tokens fewer than 4 voxels deep), the neck's output is first average-pooled to
  the level (``layout.lateral_input_grid``): every token reaches the logits.
* **Stem**: conv-norm-act on the input at full resolution, then two stride-2 ones: skips at
  full, 1/2 and 1/4 resolution, so that boundaries finer than a 16-voxel token survive.
* **Levels**, coarse to fine: the upsampled coarser level, the neck and the stem skip of that
  level are *summed* (LinkNet/FPN style: it halves the input width of the full-resolution
  convolution, the most expensive layer on a CPU), then 3x3x3 conv-norm-act blocks (one at
  full resolution, two elsewhere). Norm and activation are nnU-Net's: InstanceNorm with affine
  parameters and LeakyReLU(0.01). ``norm_at_full_resolution=False`` drops the norm from the two
  full-resolution convolutions (the stem's first and level 0's), which then have a bias.
* **Heads**: 1x1x1 convolutions to the class logits at full resolution and, with deep
  supervision, at levels 1 and 2.

Level shapes (``layout.decoder_level_shapes``) are ``ceil(s / 2)`` and ``ceil(s / 4)`` per axis
for levels 1 and 2 whatever the token size (with z = 20 the deep-supervision outputs have 10 and
5 slices), then halve each axis still finer than the token grid. Where an upsampled or strided
tensor does not land on the level's shape (odd sizes, non-integer ratios) it is trilinearly
resized, never cropped: a cropped voxel would be a token or a stem voxel that never reaches the
logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.decoder_layout import decoder_layout
from nnsam3d.model.layout import DEEP_SUPERVISION_LEVELS, Shape3, decoder_level_shapes, lateral_input_grid

LEAKY_RELU_SLOPE = 1e-2
INSTANCE_NORM_EPS = 1e-5


def fit_to_shape(x: Tensor, shape: Shape3) -> Tensor:
    """``(B, C, *spatial)`` resized trilinearly to ``shape`` where it differs (odd sizes and
    non-integer ratios); ``x`` itself when it already fits. Never crops: a cropped voxel would
    be a token or a stem voxel that never reaches the logits."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)


class ConvNormAct(nn.Sequential):
    """3D convolution (no bias: the norm removes it), InstanceNorm, in-place LeakyReLU; with
    ``normed=False`` convolution with bias and LeakyReLU (``NetworkConfig.norm_at_full_resolution``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int | Shape3 = 1, normed: bool = True):
        conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=not normed)
        norm = [nn.InstanceNorm3d(out_channels, eps=INSTANCE_NORM_EPS, affine=True)] if normed else []
        super().__init__(conv, *norm, nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True))


class TokenNeck(nn.Module):
    """``(B, Z', H, W, D)`` tokens -> ``(B, c, Z', H, W)``: linear projection, norm, activation."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, channels)
        self.norm = nn.InstanceNorm3d(channels, eps=INSTANCE_NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.act(self.norm(self.proj(tokens).permute(0, 4, 1, 2, 3).contiguous()))


def upsampling_convolution(in_channels: int, out_channels: int, factor: Shape3) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(in_channels, out_channels, kernel_size=factor, stride=factor, bias=False)


class Decoder3D(nn.Module):
    """feature_dims: width of each encoder feature (shallow to deep); feature_strides: voxels per
    token of each (``BackboneSpec.feature_strides``); config: sizes.

    forward(x, features, grid, deep_supervision, extra_terms=None): x ``(B, C, Z, Y, X)`` the
    network input, features the encoder tokens (shallow to deep, each ``(B, Z', H', W', D)`` on
    its own grid), grid the network's token grid ``(Z', H, W)`` (the coarsest) -> logits ``(B, K, Z, Y, X)``, or with deep supervision a tuple of logits at
    levels 0, 1, 2. ``extra_terms``: one more tensor per level (finest first, at that level's
    shape and width) added to the level's sum: the prompt branch of interactive networks.
    """

    def __init__(self, feature_dims: tuple[int, ...], feature_strides: list[Shape3], config: NetworkConfig):
        super().__init__()
        layout = decoder_layout(config, feature_dims, feature_strides)
        self.num_levels = len(layout.shapes)
        self.feature_levels = layout.feature_levels
        self.necks = nn.ModuleList(TokenNeck(layer.in_channels, layer.out_channels) for layer in layout.of("neck"))
        self.laterals = nn.ModuleList(upsampling_convolution(layer.in_channels, layer.out_channels, layer.kernel)
                                      for layer in layout.of("lateral"))
        self.stem = nn.ModuleList(ConvNormAct(layer.in_channels, layer.out_channels, layer.stride, layer.normed)
                                  for layer in layout.of("stem"))
        self.upsamplers = nn.ModuleList(upsampling_convolution(layer.in_channels, layer.out_channels, layer.kernel)
                                        for layer in layout.of("upsampler"))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNormAct(layer.in_channels, layer.out_channels, normed=layer.normed)
                            for layer in layout.of("conv", level)))
            for level in range(self.num_levels)
        )
        self.heads = nn.ModuleList(nn.Conv3d(layer.in_channels, layer.out_channels, kernel_size=1)
                                   for layer in layout.of("head"))
        self.apply(_init_he)

    def forward(
        self,
        x: Tensor,
        features: list[Tensor],
        grid: Shape3,
        deep_supervision: bool,
        extra_terms: list[Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        spatial = tuple(x.shape[2:])
        shapes = decoder_level_shapes(spatial, grid)
        if len(shapes) != self.num_levels:
            raise ValueError(
                f"input of {spatial} voxels needs {len(shapes)} decoder levels, but this network was "
                f"built with {self.num_levels}; use a patch size of the same kind as the configured one"
            )
        terms: list[list[Tensor]] = [[] for _ in shapes]
        skip = x
        for level, conv in enumerate(self.stem):
            skip = conv(skip)
            terms[level].append(fit_to_shape(skip, shapes[level]))
        for neck, lateral, feature, level in zip(self.necks, self.laterals, features, self.feature_levels):
            tokens = neck(feature)
            pooled = lateral_input_grid(shapes[level], tuple(feature.shape[1:4]))
            if tuple(tokens.shape[2:]) != pooled:
                tokens = F.adaptive_avg_pool3d(tokens, pooled)
            terms[level].append(fit_to_shape(lateral(tokens), shapes[level]))
        for level, term in enumerate(extra_terms or ()):
            terms[level].append(term)

        outputs: dict[int, Tensor] = {}
        wanted = DEEP_SUPERVISION_LEVELS if deep_supervision else DEEP_SUPERVISION_LEVELS[:1]
        current = None
        for level in reversed(range(self.num_levels)):
            if current is not None:
                terms[level].append(fit_to_shape(self.upsamplers[level](current), shapes[level]))
            fused = terms[level][0]
            for term in terms[level][1:]:
                fused = fused + term
            current = self.stages[level](fused)
            if level in wanted:
                outputs[level] = self.heads[DEEP_SUPERVISION_LEVELS.index(level)](current)
        if not deep_supervision:
            return outputs[0]
        return tuple(outputs[level] for level in DEEP_SUPERVISION_LEVELS)


def _init_he(module: nn.Module) -> None:
    """nnU-Net's initialisation: He normal with the LeakyReLU slope, zero biases."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_RELU_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
