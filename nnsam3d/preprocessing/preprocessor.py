"""The case preprocessor, shared by training-data preprocessing and inference.

For one case, in this order (every volume in canonical (z, y, x) order, see ``io.geometry``):

1. crop to the box of voxels non-zero in any channel (``cropped_case``); replace NaN/infinite
   voxels by the channel's smallest finite value, with a warning naming the case (training data
   never has any: fingerprinting refuses such files; a case to predict is segmented anyway);
2. normalise each channel as ``plans.normalization`` says (``normalization``), before resampling,
   so that the non-zero mask and CT clipping act on the original voxels;
3. resample to ``plans.target_spacing``: images with order ``plans.image_resampling_order``,
   label maps class by class without mixing classes, the coarse axis of anisotropic data
   separately (``resampling``); skipped when the shape would not change;
4. sample foreground voxel locations per class for the trainer's foreground oversampling.

:class:`~nnsam3d.preprocessing.case_properties.CaseProperties` records every step, so that a
prediction on the network grid goes back onto the original file grid with
``preprocessing.geometry_restore`` and ``io.image_io.write_segmentation``.

Entry points for inference: :func:`preprocess_case_files` (files → network input) and
:func:`preprocess_case` (arrays already in memory → network input).
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import ImageIO
from nnsam3d.schemas.plans import Plans
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.cropped_case import CroppedCase, crop_case, read_cropped_case
from nnsam3d.preprocessing.normalization import needs_nonzero_mask, normalize_image
from nnsam3d.preprocessing.resampling import (
    compute_new_shape,
    resample_image,
    resample_label_map,
    separate_axis_for,
)

MAX_LOCATIONS_PER_CLASS = 10_000
"""Foreground voxel locations kept per class and case: enough to centre patches anywhere in a
class, small enough to load with the case. Classes with fewer voxels keep all of them."""


class NonFiniteVoxelsWarning(UserWarning):
    """A case's image held NaN or infinite voxels, which were replaced before preprocessing."""


def replace_non_finite(images: np.ndarray, case_id: str) -> int:
    """Replace NaN/±inf voxels of each channel of ``images`` (C, z, y, x), in place, by that
    channel's smallest finite value (0 when it has none); returns how many were replaced.

    The smallest value is the background (air in CT, 0 in most MRI), the least surprising value
    for a voxel whose intensity is unknown; CT normalisation then clips it to its lower bound.
    """
    replaced = 0
    for channel, values in enumerate(images):
        finite = np.isfinite(values)
        if finite.all():
            continue
        count = int(finite.size - np.count_nonzero(finite))
        fill = float(values[finite].min()) if finite.any() else 0.0
        values[~finite] = fill
        replaced += count
        warnings.warn(
            f"{case_id}: {count} NaN/infinite voxel(s) in channel {channel} replaced by {fill:g}, the channel's "
            f"smallest finite value, before prediction; check the file if this is unexpected.",
            NonFiniteVoxelsWarning,
            stacklevel=2,
        )
    return replaced


@dataclass
class PreprocessedCase:
    """One case on the network's grid.

    data: (C, z, y, x) float32, normalised, at ``plans.target_spacing``.
    segmentation: (z, y, x) int16 on the same grid, or None when no label map was given.
    properties: how to map a prediction on this grid back to the input file's grid.
    class_locations: label value → (N, 3) int32 voxel coordinates (z, y, x) in ``data``,
        N ≤ ``MAX_LOCATIONS_PER_CLASS``; one entry per foreground class present, empty without a
        label map.
    """

    data: np.ndarray
    segmentation: np.ndarray | None
    properties: CaseProperties
    class_locations: dict[int, np.ndarray]


def sample_class_locations(
    segmentation: np.ndarray, max_per_class: int = MAX_LOCATIONS_PER_CLASS, seed: int = 0
) -> dict[int, np.ndarray]:
    """A random sample (without replacement) of the voxels of each foreground class.

    segmentation: (z, y, x) integer label map. Returns label → (N, 3) int32 (z, y, x), sorted in
    memory order, N = min(voxels of the class, ``max_per_class``), for every label > 0 present.
    Every class gets its own quota, so a small lesion is as well represented as a large organ.
    """
    flat = segmentation.reshape(-1)
    foreground = np.flatnonzero(flat > 0)  # one pass over the volume for all classes
    labels_at = flat[foreground]
    rng = np.random.default_rng(seed)
    locations: dict[int, np.ndarray] = {}
    for label in np.unique(labels_at):
        indices = foreground[labels_at == label]
        if len(indices) > max_per_class:
            indices = np.sort(rng.choice(indices, size=max_per_class, replace=False))
        locations[int(label)] = np.stack(np.unravel_index(indices, segmentation.shape), axis=1).astype(np.int32)
    return locations


def case_seed(case_id: str) -> int:
    """A seed that depends on the case only, so that results do not depend on processing order."""
    return zlib.crc32(case_id.encode("utf-8"))


def preprocess_cropped_case(case: CroppedCase, plans: Plans,
                            resampling_device: torch.device | str | None = None) -> PreprocessedCase:
    """Steps 2-4 for a case that :mod:`cropped_case` read and cropped.

    Normalises ``case.images`` in place (it is overwritten); callers that need their array
    unchanged use :func:`preprocess_case`, which copies. resampling_device: a GPU to resample
    the images on (the predictor's; ``resampling.resample_image``), else the CPU.
    """
    original_spacing = case.spacing
    replace_non_finite(case.images, case.case_id)
    mask = case.nonzero_mask() if needs_nonzero_mask(plans.normalization) else None
    images = normalize_image(case.images, plans.normalization, mask)
    del mask

    new_shape = compute_new_shape(case.shape_after_cropping, original_spacing, plans.target_spacing)
    separate_axis = separate_axis_for(original_spacing, plans.target_spacing)
    data = resample_image(images, new_shape, separate_axis, order=plans.image_resampling_order,
                          device=resampling_device)
    del images

    segmentation, locations = None, {}
    if case.segmentation is not None:
        segmentation = resample_label_map(case.segmentation, new_shape, separate_axis)
        locations = sample_class_locations(segmentation, seed=case_seed(case.case_id))

    properties = CaseProperties(
        case_id=case.case_id,
        geometry=case.geometry,
        original_spacing=original_spacing,
        shape_before_cropping=case.shape_before_cropping,
        crop_bbox=case.crop_bbox,
        shape_after_cropping=case.shape_after_cropping,
        spacing_after_resampling=plans.target_spacing,
        shape_after_resampling=data.shape[1:],
        foreground_classes=sorted(locations),
    )
    return PreprocessedCase(data, segmentation, properties, locations)


def preprocess_case(
    images: np.ndarray,
    geometry: ImageGeometry,
    plans: Plans,
    *,
    segmentation: np.ndarray | None = None,
    case_id: str,
    resampling_device: torch.device | str | None = None,
    overwrite_images: bool = False,
) -> PreprocessedCase:
    """Preprocess a case held in memory; ``images`` and ``segmentation`` are left unchanged
    (unless ``overwrite_images``).

    images: (C, z, y, x) canonical order (``io.image_io.read_channels``), any float dtype.
    geometry: the grid of the input files (spacing in mm comes from ``geometry.spacing``).
    plans: target spacing, normalisation and resampling order.
    segmentation: (z, y, x) integer label map on the same grid, or None.
    case_id: names the case in the properties and seeds the location sampling.
    resampling_device: see :func:`preprocess_cropped_case`.
    overwrite_images: the caller hands ``images`` over (float32, its own copy): normalised in
        place instead of copied first (a 512 x 512 x 300 CT: 0.45 s and 315 MB less).
    """
    case = crop_case(images, geometry, segmentation=segmentation, case_id=case_id)
    # Normalisation works in place: copy the cropped region only, not the whole image.
    if overwrite_images:
        case.images = np.ascontiguousarray(case.images, dtype=np.float32)
    else:
        case.images = np.array(case.images, dtype=np.float32, copy=True)
    return preprocess_cropped_case(case, plans, resampling_device)


def preprocess_case_files(
    image_files: Sequence[str | os.PathLike],
    plans: Plans,
    *,
    label_file: str | os.PathLike | None = None,
    case_id: str,
    image_io: ImageIO | None = None,
    resampling_device: torch.device | str | None = None,
) -> PreprocessedCase:
    """Read one case's channel files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... in channel
    order) and optional label file, and preprocess it. Unreadable files raise
    ``io.geometry.ImageReadError`` naming the file. image_io: the reader
    (``io.image_io.image_io_for_dataset``); default: chosen by file ending. resampling_device:
    see :func:`preprocess_cropped_case`."""
    case = read_cropped_case(image_files, label_file=label_file, case_id=case_id, image_io=image_io)
    return preprocess_cropped_case(case, plans, resampling_device)
