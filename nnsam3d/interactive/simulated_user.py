"""A simulated user: where the next click goes, given the current prediction and the truth.

The rule of SAM, nnInteractive and DeepEdit: look at the errors of one class, take the largest
connected error region (false negatives or false positives, whichever is larger), and click
inside it, towards its centre; a false-negative region gets a positive click, a false-positive
one a negative click. "Towards the centre" uses the distance to the region's border (mm):
evaluation clicks at the farthest point (the one nearest the centroid among equals: deterministic); training draws a point with
probability proportional to the squared distance, so that clicks vary but stay off borders.

Used by the interactive trainer (on patches) and the interactive evaluation (on whole cases).

The classes are the dataset's foreground labels (``DatasetDescription.foreground_labels``), never
its ignore label; voxels carrying the ignore label are unannotated, so nothing predicted there is
known to be wrong: they hold no false positive and get no click.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from nnsam3d.interactive.click_prompts import Click


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty mask: itself)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def error_click(
    prediction: np.ndarray,
    reference: np.ndarray,
    label: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    rng: np.random.Generator | None = None,
    ignore_label: int | None = None,
) -> Click | None:
    """The next click for class ``label``, or None when the prediction has no error for it.

    prediction, reference: (z, y, x) integer label maps on the same grid; spacing: mm per voxel.
    rng: None clicks at the region's centre (farthest from its border); a generator samples.
    ignore_label: the reference's value for unannotated voxels (None: every voxel is annotated).
    """
    predicted, true = prediction == label, reference == label
    false_negative = largest_component(true & ~predicted)
    false_positive = largest_component(predicted & ~true & annotated_voxels(reference, ignore_label))
    fn_size, fp_size = int(false_negative.sum()), int(false_positive.sum())
    if fn_size == 0 and fp_size == 0:
        return None
    positive = fn_size >= fp_size
    region = false_negative if positive else false_positive
    # Distance to the region's border: pad so that the volume's edge counts as border too.
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    if rng is None:
        # The farthest point from the border; on a plateau (boxes, slabs) the one nearest the centroid.
        deepest = np.argwhere(distance >= distance.max() - 1e-6)
        centroid = np.argwhere(region).mean(axis=0)
        nearest = deepest[np.argmin((((deepest - centroid) * np.asarray(spacing)) ** 2).sum(axis=1))]
        flat = int(np.ravel_multi_index(tuple(nearest), region.shape))
    else:
        weights = distance.ravel() ** 2
        flat = int(rng.choice(weights.size, p=weights / weights.sum()))
    position = tuple(float(v) for v in np.unravel_index(flat, region.shape))
    return Click(label=int(label), position=position, positive=positive)


def annotated_voxels(reference: np.ndarray, ignore_label: int | None) -> np.ndarray | bool:
    """Where the reference says something (not the ignore label); True everywhere without one."""
    return True if ignore_label is None else reference != ignore_label


def classes_with_errors(prediction: np.ndarray, reference: np.ndarray, classes: Iterable[int],
                        ignore_label: int | None = None) -> list[int]:
    """Those of ``classes`` (foreground label values) whose prediction differs from the reference
    somewhere the reference is annotated."""
    annotated = annotated_voxels(reference, ignore_label)
    return [label for label in classes if np.any(((prediction == label) != (reference == label)) & annotated)]
