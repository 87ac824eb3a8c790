"""Data augmentation with batchgenerators, after nnU-Net's default pipeline.

Spatial: rotation and scaling (elastic deformation optional), each applied to a fifth of the
samples; the patch is cut from the centre of a larger block around it (see
:func:`read_size_for`), so rotated corners hold image, not padding. The data loader runs the
spatial transform, reading of the block only the region a draw covers (see
``cropped_spatial_transform``). Intensity: Gaussian noise, blur, brightness, contrast,
simulated low resolution and gamma. Mirroring along every axis.

Strongly anisotropic patches (the plans found an anisotropic axis, or the patch is far thinner
in mm along one axis) are augmented in-plane only: slices along the thin axis are rotated and
scaled alike but never interpolated across, and low-resolution simulation leaves that axis
alone. This is nnU-Net's "dummy 2D" augmentation, generalised to whichever axis is thin.
Same draws and patches as batchgenerators' own transforms (``reference_transforms``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

# The factor that makes spacing anisotropic also makes a patch "thin": augmented in-plane only.
from nnsam3d.preprocessing.resampling import ANISOTROPY_THRESHOLD
from nnsam3d.trainers.cropped_spatial_transform import CroppedSpatialTransform
from nnsam3d.trainers.low_resolution_transform import SeparableLowResolutionTransform


@dataclass(frozen=True)
class AugmentationSettings:
    """What the training augmentation does.

    patch_size: the network's patch (voxels, z, y, x).
    thin_axis: spatial axis folded away for in-plane-only augmentation, None for full 3D.
    rotation_degrees: maximum rotation per rotation axis (3D) or in-plane (thin axis set).
    scale_range: zoom factors of the sampling grid (> 1 shows more context, objects look smaller).
    elastic: also apply elastic deformation (costly on the CPU, rarely helpful for SAM features).
    mirror_axes: spatial axes mirrored with probability 0.5 each.
    """

    patch_size: tuple[int, int, int]
    thin_axis: int | None = None
    rotation_degrees: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic: bool = False
    p_rotation: float = 0.2
    p_scale: float = 0.2
    p_elastic: float = 0.2
    mirror_axes: tuple[int, ...] = (0, 1, 2)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Axes the spatial transform works on (all three, or the two in-plane ones)."""
        return tuple(a for a in range(3) if a != self.thin_axis)


def thin_axis_of_patch(patch_size, spacing, anisotropic_axis: int | None) -> int | None:
    """The axis to keep out of spatial augmentation, None for full 3D augmentation.

    The plans' anisotropic axis when there is one, else an axis whose extent in mm is more than
    ``ANISOTROPY_THRESHOLD`` times smaller than the largest (a thin slab of a patch).
    """
    if anisotropic_axis is not None:
        return int(anisotropic_axis)
    extent_mm = [p * s for p, s in zip(patch_size, spacing)]
    thinnest = int(np.argmin(extent_mm))
    if max(extent_mm) > ANISOTROPY_THRESHOLD * extent_mm[thinnest]:
        return thinnest
    return None


def settings_for(patch_size, spacing, anisotropic_axis: int | None, elastic: bool = False) -> AugmentationSettings:
    """nnU-Net's defaults: ±30° in 3D, ±180° in-plane for anisotropic patches, scale 0.7-1.4."""
    thin_axis = thin_axis_of_patch(patch_size, spacing, anisotropic_axis)
    return AugmentationSettings(
        patch_size=tuple(int(p) for p in patch_size),
        thin_axis=thin_axis,
        rotation_degrees=180.0 if thin_axis is not None else 30.0,
        elastic=elastic,
    )


def _rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` (rad) in the plane of the two axes other than ``axis``."""
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = math.cos(angle)
    matrix[a, b], matrix[b, a] = -math.sin(angle), math.sin(angle)
    return matrix


def read_size_for(settings: AugmentationSettings) -> tuple[int, int, int]:
    """Voxels the data loader reads so that any allowed rotation and zoom of the patch fits.

    The bounding box of the patch's corners under rotations up to ``rotation_degrees`` (sampled
    on a grid that includes the extremes) times the largest zoom; grown only along the spatial
    axes, with the patch's parity so that the patch sits exactly at the centre.
    """
    patch = np.asarray(settings.patch_size, dtype=float)
    axes = settings.spatial_axes
    limit = math.radians(min(settings.rotation_degrees, 180.0))
    angles = np.linspace(-limit, limit, 9)
    corners = np.array(list(itertools.product(*[(-p / 2, p / 2) for p in patch])))
    rotation_axes = [settings.thin_axis] if settings.thin_axis is not None else [0, 1, 2]
    extent = patch.copy()
    for combination in itertools.product(angles, repeat=len(rotation_axes)):
        matrix = np.eye(3)
        for axis, angle in zip(rotation_axes, combination):
            matrix = _rotation(axis, angle) @ matrix
        extent = np.maximum(extent, 2 * np.abs(corners @ matrix.T).max(0))
    extent *= max(1.0, settings.scale_range[1])
    size = []
    for axis, (p, e) in enumerate(zip(settings.patch_size, extent)):
        if axis not in axes:
            size.append(int(p))
            continue
        grown = int(math.ceil(e))
        size.append(grown + (grown - p) % 2)
    return tuple(size)


class ToTensors(AbstractTransform):
    """numpy → torch: ``data`` float32, ``seg`` → ``target`` int16 (labels interpolated by
    batchgenerators arrive as floats and are rounded; nnsam3d's loader keeps them int16)."""

    def __call__(self, **batch):
        batch["data"] = torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32))
        seg = batch.pop("seg")
        if not np.issubdtype(seg.dtype, np.integer):
            seg = np.rint(seg)
        batch["target"] = torch.from_numpy(np.ascontiguousarray(seg.astype(np.int16, copy=False)))
        return batch


def spatial_transform(settings: AugmentationSettings) -> CroppedSpatialTransform:
    """Rotation and scaling of the block ``read_size_for(settings)`` into the patch; the data loader
    runs it, reading only the region each draw covers."""
    limit = math.radians(settings.rotation_degrees)
    rotation = (-limit, limit)
    return CroppedSpatialTransform(
        patch_size=settings.patch_size, block_size=read_size_for(settings), thin_axis=settings.thin_axis,
        angle_x=rotation, angle_y=rotation, angle_z=rotation, scale=settings.scale_range,
        elastic=settings.elastic, alpha=(0.0, 200.0), sigma=(9.0, 13.0),
        p_el_per_sample=settings.p_elastic, p_scale_per_sample=settings.p_scale,
        p_rot_per_sample=settings.p_rotation,
    )


def training_transforms(settings: AugmentationSettings) -> Compose:
    """The training pipeline after the spatial transform (which the data loader runs: see
    :func:`spatial_transform`): patches from ``PatchDataLoader`` → ``data``/``target`` tensors."""
    ignore_axes = (settings.thin_axis,) if settings.thin_axis is not None else None
    transforms: list[AbstractTransform] = [
        GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SeparableLowResolutionTransform(zoom_range=(0.5, 1.0), p_per_channel=0.5, p_per_sample=0.25,
                                        ignore_axes=ignore_axes),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if settings.mirror_axes:
        transforms.append(MirrorTransform(settings.mirror_axes))
    transforms.append(ToTensors())
    return Compose(transforms)


def validation_transforms() -> Compose:
    """Validation patches are used as read (the loader reads exactly the patch)."""
    return Compose([ToTensors()])
