"""Walk preprocessing backwards: from the network's grid to the canonical full image.

The network sees a case cropped to its non-zero box and resampled to the target spacing.
These functions undo both steps with the case's :class:`CaseProperties`; the last step,
canonical → file order, is ``nnsam3d.io.geometry.from_canonical`` (done when writing).
"""

from __future__ import annotations

import numpy as np

from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.cropping import paste_into_box
from nnsam3d.preprocessing.resampling import resample_label_map, resample_scores_to_label_map, separate_axis_for
from nnsam3d.preprocessing.score_resampling import host_tensor, resample_score_tensor


def export_separate_axis(properties: CaseProperties) -> int | None:
    """The axis resampled nearest-neighbour on the way back from the network grid, if any."""
    return separate_axis_for(properties.spacing_after_resampling, properties.original_spacing)


def restore_label_map(segmentation: np.ndarray, properties: CaseProperties) -> np.ndarray:
    """Label map (z, y, x) on the network grid → canonical label map of the full image (int16)."""
    return restore_crop_box_labels(
        resample_label_map(segmentation, properties.shape_after_cropping, export_separate_axis(properties)), properties
    )


def restore_crop_box_labels(labels: np.ndarray, properties: CaseProperties) -> np.ndarray:
    """Label map (z, y, x) of the crop box already at the case's spacing → canonical label map of
    the full image (int16)."""
    return paste_into_box(labels.astype(np.int16, copy=False), properties.crop_bbox,
                          properties.shape_before_cropping, fill=0)


def restore_scores_to_label_map(scores: np.ndarray, properties: CaseProperties) -> np.ndarray:
    """Class scores (K, z, y, x) on the network grid → canonical label map of the full image.

    Resampling happens on the scores (then argmax), not on a label map, which keeps
    boundaries smooth when the target spacing is coarser than the original.
    """
    cropped = resample_scores_to_label_map(scores, properties.shape_after_cropping, export_separate_axis(properties))
    return restore_crop_box_labels(cropped, properties)


def restore_probabilities(
    probabilities: np.ndarray, properties: CaseProperties, dtype: np.dtype = np.float16
) -> np.ndarray:
    """Class probabilities (K, z, y, x) → (K, Z, Y, X) of the full image in ``dtype``; outside the
    crop box is background.

    Classes are resampled one at a time straight into the output, so memory beyond the result
    is one class volume, whatever the number of classes.
    """
    full_shape = tuple(properties.shape_before_cropping)
    full = np.zeros((probabilities.shape[0], *full_shape), dtype=dtype)
    box = tuple(slice(lo, hi) for lo, hi in properties.crop_bbox)
    separate_axis = export_separate_axis(properties)
    for k, channel in enumerate(probabilities):
        resampled = resample_score_tensor(host_tensor(channel), properties.shape_after_cropping, separate_axis)
        full[k][box] = resampled.numpy()
    outside = np.ones(full_shape, dtype=bool)
    outside[box] = False
    full[0][outside] = 1
    return full
