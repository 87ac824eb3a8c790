"""batchgenerators' own transforms, configured as nnsam3d's faster equivalents: the reference those
are held to (the tests compare same-seed outputs) and the "before" that
``benchmarks/augmentation_speed.py --reference`` times.

The reference reads whole blocks (``PatchDataLoader`` without a spatial transform) and runs, in
the pipeline, batchgenerators' ``SpatialTransform`` (in 2D on the thin axis folded into the
channels, for in-plane augmentation) and ``SimulateLowResolutionTransform``; nnsam3d's loader runs
``CroppedSpatialTransform`` while reading and its pipeline ``SeparableLowResolutionTransform``.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import SpatialTransform

from nnsam3d.trainers.augmentation import AugmentationSettings, spatial_transform, training_transforms
from nnsam3d.trainers.cropped_spatial_transform import CroppedSpatialTransform
from nnsam3d.trainers.low_resolution_transform import SeparableLowResolutionTransform


class FoldAxisIntoChannels(AbstractTransform):
    """(B, C, z, y, x) → (B, C * n, a, b): the ``axis`` (size n) is folded into the channels.

    Lets batchgenerators' 2D spatial transform rotate and scale every slice the same way
    without interpolating across them. ``UnfoldAxisFromChannels`` undoes it.
    """

    def __init__(self, axis: int, keys=("data", "seg")):
        self.axis = axis
        self.keys = keys

    def __call__(self, **batch):
        for key in self.keys:
            array = np.moveaxis(batch[key], 2 + self.axis, 2)
            batch[f"_{key}_folded_shape"] = array.shape
            batch[key] = array.reshape(array.shape[0], array.shape[1] * array.shape[2], *array.shape[3:])
        return batch


class UnfoldAxisFromChannels(AbstractTransform):
    def __init__(self, axis: int, keys=("data", "seg")):
        self.axis = axis
        self.keys = keys

    def __call__(self, **batch):
        for key in self.keys:
            b, c, n = batch.pop(f"_{key}_folded_shape")[:3]
            array = batch[key].reshape(b, c, n, *batch[key].shape[2:])
            batch[key] = np.ascontiguousarray(np.moveaxis(array, 2, 2 + self.axis))
        return batch


def reference_spatial_transform(transform: CroppedSpatialTransform) -> SpatialTransform:
    """What ``transform`` does, by batchgenerators' ``SpatialTransform`` (whole block interpolated;
    on the thin axis folded into the channels where ``transform`` has one)."""
    return SpatialTransform(
        patch_size=[transform.patch_size[a] for a in transform.spatial_axes], patch_center_dist_from_border=None,
        do_elastic_deform=transform.elastic, alpha=transform.alpha, sigma=transform.sigma,
        do_rotation=True, angle_x=transform.angle_x, angle_y=transform.angle_y, angle_z=transform.angle_z,
        p_rot_per_axis=1.0, do_scale=True, scale=transform.scale,
        border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
        p_el_per_sample=transform.p_el_per_sample, p_scale_per_sample=transform.p_scale_per_sample,
        p_rot_per_sample=transform.p_rot_per_sample, independent_scale_for_each_axis=False,
    )


def reference_spatial_pipeline(transform: CroppedSpatialTransform) -> list[AbstractTransform]:
    """The reference's spatial step on whole blocks: fold, ``SpatialTransform``, unfold."""
    spatial = reference_spatial_transform(transform)
    if transform.thin_axis is None:
        return [spatial]
    return [FoldAxisIntoChannels(transform.thin_axis), spatial, UnfoldAxisFromChannels(transform.thin_axis)]


def reference_low_resolution_transform(transform: SeparableLowResolutionTransform) -> SimulateLowResolutionTransform:
    """What ``transform`` does, by batchgenerators' ``SimulateLowResolutionTransform`` (3D zooms)."""
    return SimulateLowResolutionTransform(
        zoom_range=transform.zoom_range, per_channel=True, p_per_channel=transform.p_per_channel,
        order_downsample=0, order_upsample=3, p_per_sample=transform.p_per_sample,
        ignore_axes=transform.ignore_axes or None,
    )


def reference_training_transforms(settings: AugmentationSettings) -> Compose:
    """The whole training pipeline on whole blocks (``PatchDataLoader`` with
    ``read_size=read_size_for(settings)`` and no spatial transform), by batchgenerators' own."""
    swapped = reference_spatial_pipeline(spatial_transform(settings))
    for transform in training_transforms(settings).transforms:
        if isinstance(transform, SeparableLowResolutionTransform):
            transform = reference_low_resolution_transform(transform)
        swapped.append(transform)
    return Compose(swapped)
