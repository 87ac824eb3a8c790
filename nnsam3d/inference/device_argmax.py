"""The label map taken where the class scores are, so that only labels cross to the host.

A case's scores are a (K, z, y, x) float16 volume on the network grid, on the GPU when it fits
there (``Predictor.volume_device``): for a 512 x 512 x 300 CT with 14 classes that is 2.2 GB,
against 157 MB of int16 labels. When the export needs only the label map (no probabilities
file), each class is resampled back to the case's grid and the running argmax taken on that
device (``preprocessing.score_resampling``: PyTorch's interpolation, the same arithmetic on the
GPU as on the CPU); only the crop box's int16 labels come to the host. A run that saves
probabilities needs them on the host anyway.
"""

from __future__ import annotations

import numpy as np
import torch

from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.geometry_restore import export_separate_axis
from nnsam3d.preprocessing.score_resampling import scores_to_labels


EXPORT_BYTES_PER_CASE_VOXEL = 16
"""GPU memory the resampled argmax holds per voxel of the case's crop box: the running maximum
and one resampled class (float32), the labels (int16, twice across a coarse axis), a comparison
(bool), and room for the allocator."""
GPU_EXPORT_SHARE = 0.8
"""Largest share of the free GPU memory the export may take; beyond it the scores go to the host."""


def export_fits_on_gpu(case_voxels: int, network_voxels: int, free_bytes: int) -> bool:
    """Whether resampling and argmaxing a case's scores on the GPU that holds them fits in
    ``free_bytes`` (a class of the network grid is converted to float32 too)."""
    needed = case_voxels * EXPORT_BYTES_PER_CASE_VOXEL + network_voxels * 4
    return needed < GPU_EXPORT_SHARE * free_bytes


def labels_suffice(save_probabilities: bool) -> bool:
    """Whether a case's export needs only its label map: no probabilities file. (The crop is
    undone on labels as well as on scores, and the resampling runs where the scores are.)"""
    return not save_probabilities


def labels_in_crop_box(scores: torch.Tensor, properties: CaseProperties) -> np.ndarray:
    """Class scores (K, z, y, x) on the network grid, on any device → the label map of the case's
    crop box (``properties.shape_after_cropping``, the case's own spacing) as int16 on the host;
    ties to the lower class, as ``geometry_restore.restore_scores_to_label_map``."""
    if tuple(scores.shape[1:]) != tuple(properties.shape_after_resampling):
        raise ValueError(
            f"case '{properties.case_id}': scores of shape {tuple(scores.shape[1:])} do not match "
            f"the preprocessed shape {tuple(properties.shape_after_resampling)}"
        )
    if scores.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(scores.device)
        if not export_fits_on_gpu(int(np.prod(properties.shape_after_cropping)), int(np.prod(scores.shape[1:])), free):
            scores = scores.cpu()  # a case much larger than its network grid, or a nearly full GPU
    return scores_to_labels(scores, properties.shape_after_cropping, export_separate_axis(properties)).cpu().numpy()
