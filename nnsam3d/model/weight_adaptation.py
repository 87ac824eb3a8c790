"""Pure functions that adapt SAM's 2D image-encoder weights to the 3D network (timm style).

Each function takes tensors and sizes and returns tensors; none reads files or builds modules.

**Patch embedding (the inflation rule).** SAM's kernel ``W`` has shape ``(D, 3, 16, 16)``
(embedding dim, RGB, in-plane). The 3D kernel has shape ``(D, C, tz, ty, tx)`` for C medical
channels and a token of ``tz x ty x tx`` voxels:

1. *Channels*: sum ``W`` over RGB and divide by C, then use that kernel for every channel.
2. *In-plane size*: when ``(ty, tx) != (16, 16)`` resample the kernel so that a token sees
   exactly what SAM's 16x16 kernel sees on the token's content resized to 16x16 (area
   resampling). For a finer token of 8, this is the 2x2 sum of SAM's kernel.
3. *Depth*: repeat along depth and divide by ``tz``.

So a volume of identical slices with identical channels (intensity ``s`` in every channel of
every slice) yields exactly SAM's token of the RGB image ``(s, s, s)``: the sum over C
channels and tz slices undoes the two divisions. The bias is SAM's. SAM's per-RGB input
normalisation is not replicated: the network sees the intensities as normalised by the
preprocessing.

**Positions.** SAM's absolute position embedding (a 64x64 grid of 1024/16) is resized in-plane
to the token grid with bicubic interpolation, as ViTDet does for other image sizes (SAM itself
only runs at 1024x1024 and adds its embedding unchanged; the resize is the identity when the
grid is 64x64). A depth position embedding is added, initialised to zero.
SAM's relative-position tables for height and width are resized to the length a window needs
with linear interpolation, as ``segment_anything``'s ``get_rel_pos`` does; the depth table is
new and starts at zero. With zero depth terms and zero-initialised adapters, a volume of
identical slices gives SAM's features on every slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RGB_CHANNELS = 3


def resampling_matrix(new_size: int, old_size: int) -> Tensor:
    """Matrix ``R`` of shape ``(old_size, new_size)`` that resizes a 1D signal of ``new_size``
    samples to ``old_size`` samples by area (box) interpolation: ``old = R @ new``.

    For an integer upsampling factor it repeats samples (nearest), for a downsampling factor it
    averages them.
    """
    basis = torch.eye(new_size, dtype=torch.float64)[:, None, :]  # (new, 1, new)
    return F.interpolate(basis, size=old_size, mode="area")[:, 0, :].T  # (old, new)


def resample_patch_kernel(kernel: Tensor, new_size: tuple[int, int]) -> Tensor:
    """Resample the last two (in-plane) axes of a patch-embedding kernel to ``new_size``.

    kernel: ``(..., p_y, p_x)``. Returns ``(..., new_y, new_x)`` such that, for every patch
    ``a`` of ``new_size``, ``<resampled, a> == <kernel, resize(a, (p_y, p_x))>`` with
    ``resize`` the area resampling of :func:`resampling_matrix`. Identity when the size matches.
    """
    old_y, old_x = kernel.shape[-2:]
    if (old_y, old_x) == tuple(new_size):
        return kernel.clone()
    r_y = resampling_matrix(new_size[0], old_y)
    r_x = resampling_matrix(new_size[1], old_x)
    resampled = torch.einsum("...ij,ia,jb->...ab", kernel.double(), r_y, r_x)
    return resampled.to(kernel.dtype)


def inflate_patch_embedding(
    weight_2d: Tensor, in_channels: int, token_size: tuple[int, int, int]
) -> Tensor:
    """SAM's 2D patch-embedding kernel ``(D, 3, p, p)`` -> 3D kernel ``(D, C, tz, ty, tx)``.

    The rule (module docstring): sum over RGB / C for each of the C channels, area-resample
    in-plane to ``(ty, tx)`` if needed, repeat ``tz`` times along depth / ``tz``. The bias
    needs no change.
    """
    if weight_2d.ndim != 4 or weight_2d.shape[1] != RGB_CHANNELS:
        raise ValueError(f"expected SAM's patch kernel (D, 3, p, p), got {tuple(weight_2d.shape)}")
    depth, height, width = token_size
    gray = weight_2d.sum(dim=1, keepdim=True) / in_channels  # (D, 1, p, p)
    gray = resample_patch_kernel(gray, (height, width))
    channels = gray.expand(-1, in_channels, -1, -1)
    return (channels[:, :, None] / depth).expand(-1, -1, depth, -1, -1).contiguous()


def resize_absolute_position_embedding(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize an in-plane position embedding ``(1, H, W, D)`` to ``(1, grid_y, grid_x, D)``.

    Bicubic interpolation (ViTDet's ``get_abs_pos``); the input is returned as is when the size
    already matches, so SAM's own 64x64 grid is untouched.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=tuple(grid), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


def resize_table_1d(table: Tensor, length: int) -> Tensor:
    """Resize a table ``(L, C)`` along its first axis to ``(length, C)`` by linear interpolation.

    This is how ``segment_anything``'s ``get_rel_pos`` resizes a relative-position table; we
    use the same resizing for the depth position embedding. Identity when ``L == length``.
    """
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.T[None], size=length, mode="linear")
    return resized[0].T


def relative_position_embeddings(q_size: int, k_size: int, table: Tensor) -> Tensor:
    """Embeddings ``(q_size, k_size, C)`` for every query/key offset along one axis.

    Same semantics as ``segment_anything.modeling.image_encoder.get_rel_pos``: the table
    ``(L, C)`` is resized to ``2 * max(q_size, k_size) - 1`` entries, and coordinates are
    scaled when query and key sizes differ.
    """
    max_distance = 2 * max(q_size, k_size) - 1
    resized = resize_table_1d(table, max_distance)
    q_coords = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=table.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[offsets.long()]


SAM_NECK_PREFIX = "neck."
"""SAM's 256-channel neck feeds its prompt decoder; 3DMedSAM has its own necks and drops it."""


def adapt_sam_encoder_state(
    sam_encoder_state: dict[str, Tensor], in_channels: int, token_size: tuple[int, int, int]
) -> dict[str, Tensor]:
    """Map SAM's image-encoder state (keys without ``image_encoder.``) to the 3D encoder's keys.

    The 3D encoder keeps SAM's names and shapes (``pos_embed``, ``blocks.N.attn.rel_pos_h`` ...)
    except for the patch kernel, which is inflated; SAM's neck is dropped. Parameters that SAM
    does not have (depth position embedding, depth tables, adapters) are not in the result:
    they keep their initialisation.
    """
    adapted = {}
    for key, value in sam_encoder_state.items():
        if key.startswith(SAM_NECK_PREFIX):
            continue
        if key == "patch_embed.proj.weight":
            value = inflate_patch_embedding(value, in_channels, token_size)
        adapted[key] = value
    return adapted
