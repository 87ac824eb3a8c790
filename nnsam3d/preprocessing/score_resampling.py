"""Class scores back to the case's grid with PyTorch, on the device that holds them.

The export resamples every class's scores from the network grid to the case's own grid and
takes the argmax. The reference is :func:`resampling.resample_score_channel`: scipy's
``ndimage.zoom`` of order 1 on the grid of voxel centres with "nearest" edges, and nearest
neighbour across a coarse axis. That linear zoom is PyTorch's trilinear (in-plane: bilinear)
interpolation with ``align_corners=False``: both place output voxel ``i`` at input coordinate
``(i + 0.5) * n_in / n_out - 0.5`` and hold the edge values beyond the border. They agree to
about 1e-6 (PyTorch's weights are float32, scipy's float64); across a coarse axis the same
voxels are picked (``axis_matrices.nearest_indices`` asks scipy which).

Why: scipy's zoom runs on one core; for a 512 x 512 x 300 CT at 0.7 x 0.7 x 1.25 mm with 15
classes the export took 40 s at the typical plan's 2.5 mm slices and 73 s at 1.5 mm, longer than
the network takes on a GPU. This code: 3.6 and 8.7 s on the same 2 cores
(``benchmarks/export_speed.py``), and on a GPU the scores never leave it, only the int16 labels do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnsam3d.preprocessing.device_resampling import nearest_index_tensor


def resample_score_tensor(channel: torch.Tensor, new_shape: Sequence[int], separate_axis: int | None = None) -> torch.Tensor:
    """One class's scores (z, y, x) → float32 (``new_shape``) on the same device: linear, nearest
    across ``separate_axis``. The input itself (as float32) when the shape is already right."""
    channel = channel.float()
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(channel.shape) == new_shape:
        return channel
    if separate_axis is None:
        return F.interpolate(channel[None, None], size=new_shape, mode="trilinear", align_corners=False)[0, 0]
    # In-plane first, then across, as the reference does.
    slices = channel.movedim(separate_axis, 0)
    in_plane = tuple(n for axis, n in enumerate(new_shape) if axis != separate_axis)
    if tuple(slices.shape[1:]) != in_plane:
        slices = F.interpolate(slices[:, None], size=in_plane, mode="bilinear", align_corners=False)[:, 0]
    depth = new_shape[separate_axis]
    if slices.shape[0] != depth:
        slices = slices.index_select(0, nearest_index_tensor(slices.shape[0], depth, slices.device))
    return slices.movedim(0, separate_axis).contiguous()


def scores_to_labels(scores: torch.Tensor, new_shape: Sequence[int], separate_axis: int | None = None) -> torch.Tensor:
    """Class scores (K, z, y, x) → int16 label map (``new_shape``) on the scores' device: each
    class resampled in turn (memory: three volumes whatever K), the highest wins, ties and NaN to
    the lower class as in the reference."""
    if scores.ndim != 4:
        raise ValueError(f"expected class scores (K, z, y, x), got shape {tuple(scores.shape)}")
    if scores.shape[0] > np.iinfo(np.int16).max:
        raise ValueError(f"{scores.shape[0]} classes do not fit an int16 label map")
    new_shape = tuple(int(n) for n in new_shape)
    if separate_axis is not None and scores.shape[1 + separate_axis] != new_shape[separate_axis]:
        # Nearest neighbour across the coarse axis picks whole slices, and a voxel's argmax does
        # not care which slice it is in: argmax on the scores' own slices, then pick label slices.
        own_slices = list(new_shape)
        own_slices[separate_axis] = scores.shape[1 + separate_axis]
        labels = scores_to_labels(scores, own_slices, separate_axis)
        picked = nearest_index_tensor(own_slices[separate_axis], new_shape[separate_axis], labels.device)
        return labels.index_select(separate_axis, picked)
    best = torch.full(new_shape, -torch.inf, dtype=torch.float32, device=scores.device)
    labels = torch.zeros(new_shape, dtype=torch.int16, device=scores.device)
    for k in range(scores.shape[0]):
        resampled = resample_score_tensor(scores[k], new_shape, separate_axis)
        labels.masked_fill_(resampled > best, k)
        # fmax, not maximum: a NaN score must not become the running maximum (NaN never wins).
        torch.fmax(best, resampled, out=best)
    return labels


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a CPU tensor without a copy where PyTorch allows one (it refuses
    read-only memory, such as a memory-mapped file, and negative strides: those are copied)."""
    shareable = array.flags.writeable and all(stride >= 0 for stride in array.strides)
    return torch.from_numpy(array if shareable else np.array(array))
