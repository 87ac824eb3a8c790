"""3D adapters: the trainable inter-slice path beside SAM's frozen MLPs.

An adapter is a bottleneck on the token grid: ``D -> r`` projection, a depthwise 3x3x3
convolution over the ``(Z, H, W)`` token grid (the only place besides attention where tokens
of neighbouring slices meet), GELU, ``r -> D`` projection. The last projection starts at zero,
so at step 0 the adapted block computes exactly what SAM's block computes.

It sits in parallel to the MLP (as in AdaptFormer), reading the MLP's normalised input:
``x = x + mlp(norm2(x)) + adapter(norm2(x))``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Adapter3D(nn.Module):
    """dim: token width D; bottleneck: width r of the projection.

    forward: ``(B, Z, H, W, D) -> (B, Z, H, W, D)``.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel_size=3, padding=1, groups=bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.down(x).permute(0, 4, 1, 2, 3)  # channels first, memory stays channels last
        hidden = self.act(self.conv(hidden))
        # Back to contiguous tokens whatever memory format the convolution chose, so that the
        # block output (and what autograd saves of it) is laid out the same on every device.
        return self.up(hidden.permute(0, 2, 3, 4, 1).contiguous())
