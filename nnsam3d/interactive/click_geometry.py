"""Where a user's click lands on the network grid.

A click is given in world coordinates (mm, RAS+, as the image's affine defines them) or as a
voxel index ``(i, j, k)`` of the input image. It is taken through the same steps as the image:
canonical order, crop to the non-zero box, resampling to the target spacing (resampling maps
voxel centres with ``grid_mode``: ``(c + 0.5) * new / old - 0.5``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.preprocessing.case_properties import CaseProperties


class ClickError(ValueError):
    """A click that cannot be used (outside the image, unknown label, ...); the message says why."""


def voxel_to_world(voxel: Sequence[float], geometry: ImageGeometry) -> np.ndarray:
    """Input-image voxel index (i, j, k) → world point (mm)."""
    return (geometry.affine_array @ np.array([*map(float, voxel), 1.0]))[:3]


def _canonical_position(point: np.ndarray, properties: CaseProperties) -> np.ndarray:
    """World point (mm) → continuous canonical voxel (z, y, x) of the input image."""
    return (np.linalg.inv(properties.geometry.canonical_affine) @ np.array([*point, 1.0]))[:3]


def world_to_network_voxel(point_mm: Sequence[float], properties: CaseProperties) -> tuple[float, float, float]:
    """World point (mm) → continuous voxel (z, y, x) of the network grid.

    Raises :class:`ClickError` when the point lies outside the image, or outside the non-zero
    box that preprocessing keeps (the model never sees that region; it is background).
    """
    point = np.asarray(point_mm, dtype=np.float64)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise ClickError(f"a click needs three finite coordinates in mm, got {point_mm!r}")
    canonical = _canonical_position(point, properties)
    full = np.array(properties.shape_before_cropping)
    if np.any(canonical < -0.5) or np.any(canonical > full - 0.5):
        raise ClickError(
            f"click at {tuple(round(float(v), 2) for v in point)} mm lies outside the image "
            f"(voxel {tuple(round(float(v), 1) for v in canonical)} of a {tuple(int(n) for n in full)} grid, z, y, x)"
        )
    low = np.array([lo for lo, _ in properties.crop_bbox])
    high = np.array([hi for _, hi in properties.crop_bbox])
    cropped = canonical - low
    if np.any(canonical < low - 0.5) or np.any(canonical > high - 0.5):
        raise ClickError(
            f"click at {tuple(round(float(v), 2) for v in point)} mm lies in the image's zero-valued border, "
            f"which the model never sees (its non-zero box is {properties.crop_bbox}, z, y, x voxels)"
        )
    scale = np.array(properties.shape_after_resampling) / np.array(properties.shape_after_cropping)
    network = (cropped + 0.5) * scale - 0.5
    network = np.clip(network, 0, np.array(properties.shape_after_resampling) - 1)
    return tuple(float(v) for v in network)


def world_to_image_voxel(point_mm: Sequence[float], properties: CaseProperties) -> tuple[int, int, int]:
    """World point (mm) → the canonical input-image voxel (z, y, x) it falls in (a point that
    :func:`world_to_network_voxel` accepts lies inside the image)."""
    canonical = _canonical_position(np.asarray(point_mm, dtype=np.float64), properties)
    full = properties.shape_before_cropping
    return tuple(int(min(max(np.rint(v), 0), n - 1)) for v, n in zip(canonical, full))


def clickable_class(description, label: str | int) -> int:
    """The class value of ``label`` (a name or value of ``description``, the dataset's
    ``DatasetDescription``); :class:`ClickError` unless it is one of its foreground classes."""
    labels = description.labels
    if isinstance(label, str) and label in labels:
        value = labels[label]
    elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and int(label) in labels.values():
        value = int(label)
    else:
        names = ", ".join(description.label_name(v) for v in description.foreground_labels)
        raise ClickError(f"unknown label {label!r}; this model segments: {names}")
    if value == 0:
        raise ClickError("clicks are for foreground classes; a negative click removes a class instead of "
                         "adding background")
    if value == description.ignore_label:
        raise ClickError(f"{label!r} is the dataset's ignore label (unannotated voxels), not a class the "
                         "model predicts; click a foreground class")
    return value
