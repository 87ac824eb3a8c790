"""A segmentation the user brings to refine, checked and put where the session works on it.

``open_session(..., initial_labels=seg)`` starts from a given label map instead of the model's
automatic one: it must have the image's shape and only labels the model knows, and it becomes
the session's starting labels (canonical order, the input grid) and its starting scores (one-hot
on the network grid, resampled as the predictor resamples label maps).
"""

from __future__ import annotations

import numpy as np
import torch

from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.io.geometry import ImageGeometry, to_canonical
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.resampling import resample_label_map, separate_axis_for


def canonical_initial_labels(initial_labels: np.ndarray, geometry: ImageGeometry, num_classes: int) -> np.ndarray:
    """The given (i, j, k) label map in canonical order (int16); :class:`ClickError` if it does
    not fit the image or holds labels the model does not know."""
    initial_labels = np.asarray(initial_labels)
    if initial_labels.shape != tuple(geometry.shape):
        raise ClickError(f"the initial segmentation has shape {initial_labels.shape}, the image {tuple(geometry.shape)}")
    unknown = sorted(set(np.unique(initial_labels).tolist()) - set(range(num_classes)))
    if unknown:
        raise ClickError(f"the initial segmentation holds label values {unknown} this model does not know "
                         f"(0..{num_classes - 1})")
    return to_canonical(initial_labels.astype(np.int16), geometry.affine_array)


def one_hot_on_network_grid(canonical_labels: np.ndarray, properties: CaseProperties, num_classes: int) -> torch.Tensor:
    """(K, network grid) one-hot scores of a canonical label map, cropped and resampled as preprocessing does."""
    box = tuple(slice(lo, hi) for lo, hi in properties.crop_bbox)
    separate_axis = separate_axis_for(properties.original_spacing, properties.spacing_after_resampling)
    on_grid = resample_label_map(canonical_labels[box], properties.shape_after_resampling, separate_axis)
    labels = torch.from_numpy(np.ascontiguousarray(on_grid, dtype=np.int64))
    return torch.nn.functional.one_hot(labels, num_classes).permute(3, 0, 1, 2).float()
