"""3D patch embedding: one token per ``tz x ty x tx`` voxels, channels last like SAM."""

from __future__ import annotations

from torch import Tensor, nn


class PatchEmbedding3D(nn.Module):
    """A strided 3D convolution, kernel = stride = token size.

    Replaces SAM's 2D ``patch_embed`` (the module keeps its ``proj`` name, so the inflated SAM
    kernel of :func:`~nnsam3d.model.weight_adaptation.inflate_patch_embedding` loads as
    ``patch_embed.proj.weight``).

    forward: ``(B, C, Z, Y, X) -> (B, Z / tz, Y / ty, X / tx, D)``.
    """

    def __init__(self, in_channels: int, embed_dim: int, token_size: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=token_size, stride=token_size)

    def forward(self, x: Tensor) -> Tensor:
        # Contiguous tokens: the residual stream inherits this layout through every block, and
        # the necks' linear layers would otherwise save a reordered copy of each feature.
        return self.proj(x).permute(0, 2, 3, 4, 1).contiguous()
