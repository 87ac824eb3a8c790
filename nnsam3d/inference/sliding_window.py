"""Sliding-window prediction over a whole volume.

The network takes windows of ``plans.patch_size`` voxels; a case is usually larger. Windows
are laid out so that they overlap by ``1 - step_size`` of the window and the first and last
window of every axis touch the image borders, so every voxel is covered. Each window's class
probabilities are weighted with a Gaussian (:mod:`gaussian_weights`) and the weighted sum is
divided by the sum of weights, voxel by voxel. Windows go through the network in batches.

Images smaller than the window along an axis are padded (with 0, the mean of a normalised
image) and the padding is cut off the result.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nnsam3d.inference.gaussian_weights import gaussian_importance_map

Window = tuple[slice, slice, slice]


def window_starts(image_size: int, patch_size: int, step_size: float) -> list[int]:
    """First voxel of each window along one axis (voxels).

    The windows are spread evenly between 0 and ``image_size - patch_size`` with a stride of at
    most ``step_size * patch_size``; the first starts at 0 and the last ends at the border.
    """
    if not 0.0 < step_size <= 1.0:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if image_size < patch_size:
        raise ValueError(f"image size {image_size} is smaller than the window {patch_size}; pad it first")
    if image_size == patch_size:
        return [0]
    num_windows = math.ceil((image_size - patch_size) / (patch_size * step_size)) + 1
    stride = (image_size - patch_size) / (num_windows - 1)
    return [int(round(i * stride)) for i in range(num_windows)]


def window_slices(image_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[Window]:
    """Every window (z, y, x slices) of a sliding-window pass over ``image_shape``, in raster order."""
    starts = [window_starts(int(n), int(p), step_size) for n, p in zip(image_shape, patch_size)]
    return [
        tuple(slice(s, s + int(p)) for s, p in zip(corner, patch_size))
        for corner in itertools.product(*starts)
    ]


def pad_to_patch_size(data: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, Window]:
    """Pad (C, z, y, x) with zeros to at least ``patch_size`` per axis, centred.

    Returns the padded tensor and the slices of the original image inside it.
    """
    spatial = data.shape[1:]
    before, after = [], []
    for size, patch in zip(spatial, patch_size):
        missing = max(int(patch) - int(size), 0)
        before.append(missing // 2)
        after.append(missing - missing // 2)
    region = tuple(slice(b, b + int(n)) for b, n in zip(before, spatial))
    if not any(before) and not any(after):
        return data, region
    # F.pad lists the last axis first.
    pads = [v for axis in (2, 1, 0) for v in (before[axis], after[axis])]
    return F.pad(data, pads, mode="constant", value=0.0), region


def sliding_window_predict(
    data: torch.Tensor,
    predict_windows: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    patch_size: Sequence[int],
    step_size: float = 0.5,
    batch_size: int = 1,
    accumulator_dtype: torch.dtype = torch.float32,
    accumulator_device: torch.device | str | None = None,
    compute_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Gaussian-weighted average of window predictions over a whole image.

    data: (C, z, y, x) normalised image (any device; windows are copied to ``compute_device``).
    predict_windows: (B, C, *patch_size) → (B, K, *patch_size) class probabilities (or any
        score to be averaged) on the compute device, in a new tensor of its own: a float32
        result is weighted in place.
    num_classes: K.
    batch_size: windows per network call. The result does not depend on it.
    accumulator_dtype, accumulator_device: where the (K, z, y, x) sums live. float16 halves the
        memory and is safe for probabilities: each sum stays below the number of windows that
        overlap a voxel. The weight sum is always float32.
    progress: show a progress bar over the window batches.

    Returns (K, z, y, x) on ``accumulator_device`` in ``accumulator_dtype``.
    """
    if data.ndim != 4:
        raise ValueError(f"expected an image (C, z, y, x), got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    patch_size = tuple(int(p) for p in patch_size)
    compute_device = torch.device(compute_device) if compute_device is not None else data.device
    accumulator_device = torch.device(accumulator_device) if accumulator_device is not None else data.device

    padded, region = pad_to_patch_size(data, patch_size)
    spatial = tuple(padded.shape[1:])
    windows = window_slices(spatial, patch_size, step_size)
    weights = torch.from_numpy(np.array(gaussian_importance_map(patch_size))).to(compute_device)
    accumulated_weights = weights.to(accumulator_device)

    scores = torch.zeros((num_classes, *spatial), dtype=accumulator_dtype, device=accumulator_device)
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=accumulator_device)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    for batch in tqdm(batches, desc="windows", unit="batch", leave=False, disable=not progress):
        inputs = torch.stack([padded[(slice(None), *window)] for window in batch]).to(compute_device)
        predictions = predict_windows(inputs)
        if predictions.shape != (len(batch), num_classes, *patch_size):
            raise ValueError(
                f"the network returned {tuple(predictions.shape)} for windows {tuple(inputs.shape)}; "
                f"expected ({len(batch)}, {num_classes}, {', '.join(map(str, patch_size))})"
            )
        # In place: the predictions are ours (see predict_windows), and a product would allocate
        # another (B, K, patch) float32 tensor per batch.
        weighted = predictions.float().mul_(weights).to(accumulator_device, accumulator_dtype)
        for index, window in enumerate(batch):
            scores[(slice(None), *window)] += weighted[index]
            weight_sum[window] += accumulated_weights

    # Class by class, so that the division's float32 temporary is one volume, not K.
    for k in range(num_classes):
        scores[k] = scores[k].float().div_(weight_sum)
    del weight_sum
    if tuple(s.stop - s.start for s in region) != spatial:
        scores = scores[(slice(None), *region)].clone()
    return scores
