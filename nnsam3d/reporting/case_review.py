"""What the QC page says about one predicted case: per-class volumes, pieces, metrics, flags.

Flags point at cases worth a look, they are not errors:

* ``missing``: a class with no predicted voxel (when the training labels have it in at least
  half of their cases, or always without a fingerprint);
* ``volume``: a class's volume far outside the training labels' range: below half the
  smallest or above twice the largest volume among the training cases that contain it
  (``dataset_fingerprint.json``'s per-class sizes);
* ``fragments``: a class split into disconnected pieces (26-connectivity) whose pieces beyond
  the largest hold at least ``FRAGMENT_SHARE`` of its volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from nnsam3d.schemas.fingerprint import DatasetFingerprint

FRAGMENT_SHARE = 0.05
VOLUME_FACTOR = 2.0
"""How far beyond the training range a volume must lie to be flagged (a factor on min and max)."""
PRESENT_SHARE = 0.5
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass
class ClassReview:
    """One class of one case. volume_ml: predicted volume in millilitres. pieces: connected
    components. fragment_share: share of the volume outside the largest piece. dice, nsd:
    against the reference (None without one, or undefined)."""

    volume_ml: float
    pieces: int
    fragment_share: float
    dice: float | None = None
    nsd: float | None = None


@dataclass
class TrainingSizes:
    """Per-class volume range (mL) among the training cases containing the class, and the share
    of training cases containing it; from the dataset fingerprint."""

    low_ml: dict[int, float] = field(default_factory=dict)
    high_ml: dict[int, float] = field(default_factory=dict)
    present_share: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_fingerprint(cls, fingerprint: DatasetFingerprint) -> "TrainingSizes":
        sizes = cls()
        for key, statistics in fingerprint.class_statistics.items():
            label = int(key)
            volumes = [v / 1000.0 for v in statistics.volumes_mm3 if v > 0]
            sizes.present_share[label] = statistics.cases_present / max(1, len(statistics.volumes_mm3))
            if volumes:
                sizes.low_ml[label], sizes.high_ml[label] = min(volumes), max(volumes)
        return sizes


def review_classes(label_map: np.ndarray, spacing, labels: dict[str, int]) -> dict[str, ClassReview]:
    """Volume and pieces of every foreground class of a canonical label map (spacing in mm)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    reviews = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        mask = label_map == int(value)
        voxels = int(mask.sum())
        pieces, share = 0, 0.0
        if voxels:
            box = ndimage.find_objects(mask.astype(np.uint8))[0]
            components, pieces = ndimage.label(mask[box], structure=_FULL_CONNECTIVITY)
            if pieces > 1:
                largest = int(np.bincount(components.ravel())[1:].max())
                share = 1.0 - largest / voxels
        reviews[name] = ClassReview(volume_ml=voxels * voxel_ml, pieces=int(pieces), fragment_share=share)
    return reviews


def flags_for(reviews: dict[str, ClassReview], labels: dict[str, int], sizes: TrainingSizes | None) -> list[str]:
    """Readable flags of one case (see the module), e.g. ``"liver missing"``."""
    flags = []
    for name, review in reviews.items():
        label = int(labels[name])
        if review.volume_ml == 0:
            if sizes is None or sizes.present_share.get(label, 1.0) >= PRESENT_SHARE:
                flags.append(f"{name} missing")
            continue
        if sizes is not None and label in sizes.low_ml:
            low, high = sizes.low_ml[label], sizes.high_ml[label]
            if review.volume_ml < low / VOLUME_FACTOR or review.volume_ml > high * VOLUME_FACTOR:
                flags.append(f"{name} volume {review.volume_ml:.3g} mL outside training {low:.3g}-{high:.3g} mL")
        if review.fragment_share >= FRAGMENT_SHARE:
            flags.append(f"{name} in {review.pieces} pieces ({100 * review.fragment_share:.0f}% outside the largest)")
    return flags
