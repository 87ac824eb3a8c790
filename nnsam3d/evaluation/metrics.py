"""Segmentation metrics for one class of one case: Dice, IoU, normalised surface Dice, HD95.

Distances are in millimetres: every function takes the voxel size along each axis, so
anisotropic spacing counts (a voxel step across 3 mm slices is 3 mm, one in-plane 0.8 mm).

Surfaces are voxel sets: the voxels of a mask with at least one of their 6 face neighbours
outside the mask (the image border counts as outside). The distance of a surface voxel to the
other surface is the Euclidean distance, in mm, between voxel centres, to the nearest voxel of
the other surface.

* Dice = 2|R∩P| / (|R| + |P|);  IoU = |R∩P| / |R∪P|.
* NSD (normalised surface Dice at tolerance τ mm) = (number of surface voxels of R within τ of
  P's surface + those of P within τ of R's surface) / (surface voxels of R + of P).
* HD95 = max(95th percentile of the distances R→P, 95th percentile of P→R), mm.

Conventions when a mask is empty (R: reference, P: prediction):

===================  ======  ======  ======  =======
case                 Dice    IoU     NSD     HD95
===================  ======  ======  ======  =======
R and P empty        NaN     NaN     NaN     NaN
R empty, P not       0       0       0       NaN
R not, P empty       0       0       0       NaN
===================  ======  ======  ======  =======

When both are empty the class is absent and correctly not predicted: there is nothing to
measure, and scoring it 1 would inflate the mean of rarely present classes (nnU-Net's choice
too). NaN values are left out of means (which also report how many cases they cover). A
one-sided empty mask is a complete miss for the overlap metrics; its Hausdorff distance is
undefined (no surface to measure from or to), so HD95 is NaN rather than infinite, and the
miss shows in Dice and NSD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case; NaN where undefined (see the module's table).

    reference_voxels, prediction_voxels: mask sizes (voxels).
    """

    dice: float
    iou: float
    nsd: float
    hd95_mm: float
    reference_voxels: int
    prediction_voxels: int

    def to_json(self) -> dict:
        return {
            "Dice": _json_number(self.dice),
            "IoU": _json_number(self.iou),
            "NSD": _json_number(self.nsd),
            "HD95_mm": _json_number(self.hd95_mm),
            "reference_voxels": self.reference_voxels,
            "prediction_voxels": self.prediction_voxels,
        }


def _json_number(value: float) -> float | None:
    """NaN → None (``null`` in JSON, which has no NaN)."""
    return None if value is None or np.isnan(value) else float(value)


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """2|R∩P| / (|R| + |P|) of two boolean masks; NaN when both are empty."""
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def iou(reference: np.ndarray, prediction: np.ndarray) -> float:
    """|R∩P| / |R∪P| of two boolean masks; NaN when both are empty."""
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    union = int(np.logical_or(reference, prediction).sum())
    if union == 0:
        return float("nan")
    return int(np.logical_and(reference, prediction).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels of a (z, y, x) mask: in the mask, with a face neighbour outside it
    (outside the image counts as outside)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=_FACE_NEIGHBOURS)[1:-1, 1:-1, 1:-1]
    return mask & ~eroded


def _joint_box(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box (slices) of the voxels set in any of the masks; masks must not all be empty."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of R to P's surface, and from P's to R's.

    Both masks must be non-empty. Computed inside the masks' joint bounding box: the nearest
    surface voxel of either mask lies inside it, so the distances are exact and a small
    structure in a large image stays cheap.
    """
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    if not reference.any() or not prediction.any():
        raise ValueError("surface distances need two non-empty masks")
    # Both masks are empty outside the box, and surface() counts what lies beyond its input as
    # outside, so surfaces of the cropped masks equal the full grid's surfaces cropped.
    box = _joint_box(reference, prediction)
    surface_r, surface_p = surface(reference[box]), surface(prediction[box])
    spacing = tuple(float(s) for s in spacing)
    distance_to_r = ndimage.distance_transform_edt(~surface_r, sampling=spacing)
    distance_to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    return distance_to_p[surface_r], distance_to_r[surface_p]


def _nsd_from_distances(r_to_p: np.ndarray, p_to_r: np.ndarray, tolerance_mm: float) -> float:
    within = int((r_to_p <= tolerance_mm).sum()) + int((p_to_r <= tolerance_mm).sum())
    return within / (len(r_to_p) + len(p_to_r))


def _hd95_from_distances(r_to_p: np.ndarray, p_to_r: np.ndarray) -> float:
    return float(max(np.percentile(r_to_p, 95), np.percentile(p_to_r, 95)))


def _surface_metrics(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, float]:
    """(NSD, HD95 mm) with the empty-mask conventions of the module; one distance computation."""
    has_r, has_p = bool(reference.any()), bool(prediction.any())
    if not has_r and not has_p:
        return float("nan"), float("nan")
    if not has_r or not has_p:
        return 0.0, float("nan")
    r_to_p, p_to_r = surface_distances(reference, prediction, spacing)
    return _nsd_from_distances(r_to_p, p_to_r, tolerance_mm), _hd95_from_distances(r_to_p, p_to_r)


def normalized_surface_dice(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Share of both surfaces lying within ``tolerance_mm`` of the other surface (see module).

    NaN when both masks are empty, 0 when exactly one is.
    """
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    return _surface_metrics(reference, prediction, spacing, tolerance_mm)[0]


def hausdorff_distance_95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """max of the two directed 95th-percentile surface distances (mm); NaN if a mask is empty."""
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    return _surface_metrics(reference, prediction, spacing, 0.0)[1]


def class_metrics(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float = 2.0
) -> ClassMetrics:
    """All metrics of one class: ``reference`` and ``prediction`` are boolean (z, y, x) masks,
    ``spacing`` the voxel size in mm along the same axes."""
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    nsd, hd95 = _surface_metrics(reference, prediction, spacing, nsd_tolerance_mm)
    return ClassMetrics(
        dice=dice(reference, prediction),
        iou=iou(reference, prediction),
        nsd=nsd,
        hd95_mm=hd95,
        reference_voxels=int(reference.sum()),
        prediction_voxels=int(prediction.sum()),
    )
