"""Augmentation: in-plane for thin patches, read size, fold/unfold, and the full pipeline."""

from __future__ import annotations

import random

import numpy as np
import torch

from nnsam3d.trainers.augmentation import (
    read_size_for,
    settings_for,
    spatial_transform,
    thin_axis_of_patch,
    training_transforms,
)
from nnsam3d.trainers.reference_transforms import FoldAxisIntoChannels, UnfoldAxisFromChannels


def test_thin_axis_from_the_plans_or_from_the_patch_extent_in_mm():
    assert thin_axis_of_patch((16, 64, 64), (1.0, 1.0, 1.0), anisotropic_axis=2) == 2
    assert thin_axis_of_patch((16, 64, 64), (1.0, 1.0, 1.0), None) == 0  # 16 mm vs 64 mm
    assert thin_axis_of_patch((16, 64, 64), (3.0, 1.0, 1.0), None) is None  # 48 mm vs 64 mm
    assert thin_axis_of_patch((64, 64, 64), (1.0, 1.0, 1.0), None) is None


def test_read_size_covers_rotation_and_zoom_only_along_augmented_axes():
    in_plane = settings_for((8, 32, 32), (5.0, 1.0, 1.0), anisotropic_axis=0)
    size = read_size_for(in_plane)
    assert size[0] == 8  # the thin axis is never resampled
    # 45 degrees in-plane turns a 32 square into a 45.3 box; times the largest zoom 1.4.
    assert size[1] == size[2] >= int(32 * 2**0.5 * 1.4)
    assert all((s - p) % 2 == 0 for s, p in zip(size, (8, 32, 32)))
    full = read_size_for(settings_for((32, 32, 32), (1.0, 1.0, 1.0), anisotropic_axis=None))
    assert all(s > 32 * 1.4 for s in full)


def test_folding_an_axis_into_channels_round_trips():
    batch = {"data": np.random.rand(2, 3, 4, 5, 6).astype(np.float32), "seg": np.random.rand(2, 1, 4, 5, 6)}
    original = {k: v.copy() for k, v in batch.items()}
    for axis in range(3):
        folded = FoldAxisIntoChannels(axis)(**dict(batch))
        assert folded["data"].ndim == 4 and folded["data"].shape[1] == 3 * (4, 5, 6)[axis]
        restored = UnfoldAxisFromChannels(axis)(**folded)
        np.testing.assert_array_equal(restored["data"], original["data"])
        np.testing.assert_array_equal(restored["seg"], original["seg"])


def _batch(read_size, patch_z_labels=True):
    data = np.random.randn(2, 1, *read_size).astype(np.float32)
    seg = np.zeros((2, 1, *read_size), dtype=np.int16)
    if patch_z_labels:  # every slice has its own label pattern: z index mod 3 inside a square
        for z in range(read_size[0]):
            seg[:, :, z, 10:-10, 10:-10] = z % 3
    return {"data": data, "seg": seg, "keys": ["a", "b"]}


def test_training_pipeline_outputs_patch_tensors_and_keeps_slices_apart_in_plane():
    settings = settings_for((8, 32, 32), (5.0, 1.0, 1.0), anisotropic_axis=0)
    spatial, transforms = spatial_transform(settings), training_transforms(settings)
    np.random.seed(1)
    for _ in range(10):
        out = transforms(**spatial(**_batch(read_size_for(settings))))
        assert out["data"].dtype == torch.float32 and tuple(out["data"].shape) == (2, 1, 8, 32, 32)
        assert out["target"].dtype == torch.int16 and tuple(out["target"].shape) == (2, 1, 8, 32, 32)
        # In-plane augmentation never mixes slices: each slice holds one label (or background),
        # consistent with a (possibly mirrored) z order.
        for sample in out["target"][:, 0]:
            labels = [set(s.unique().tolist()) - {0} for s in sample]
            values = [next(iter(s)) for s in labels if s]
            assert all(len(s) <= 1 for s in labels)
            assert len(values) >= 1
            present = {z: next(iter(s)) for z, s in enumerate(labels) if s}
            last = len(labels) - 1
            assert any(
                all(value == order(z) % 3 for z, value in present.items())
                for order in (lambda z: z, lambda z: last - z)
            ), present


def test_whole_pipeline_equals_batchgenerators_own_transforms_with_the_same_seed():
    """The faster spatial and low-resolution transforms and the rest of the real pipeline, against
    the pipeline with batchgenerators' own (what ``augmentation_speed.py --reference`` times)."""
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import SpatialTransform

    from nnsam3d.trainers.reference_transforms import reference_training_transforms

    for settings in (settings_for((8, 32, 32), (5.0, 1.0, 1.0), anisotropic_axis=0),
                     settings_for((12, 14, 16), (1.0, 1.0, 1.0), anisotropic_axis=None)):
        spatial, ours = spatial_transform(settings), training_transforms(settings)
        reference = reference_training_transforms(settings)
        kinds = [type(t) for t in reference.transforms]
        assert SpatialTransform in kinds and SimulateLowResolutionTransform in kinds
        for seed in range(6):
            np.random.seed(100 + seed)
            batch = _batch(read_size_for(settings))
            random.seed(seed), np.random.seed(seed)  # batchgenerators' noise and blur draw from both
            expected = reference(**{k: np.copy(v) for k, v in batch.items()})
            random.seed(seed), np.random.seed(seed)
            got = ours(**spatial(**{k: np.copy(v) for k, v in batch.items()}))
            torch.testing.assert_close(got["data"], expected["data"], rtol=0, atol=1e-5)
            assert torch.equal(got["target"], expected["target"])


def test_to_tensors_rounds_interpolated_labels_and_keeps_integer_ones():
    from nnsam3d.trainers.augmentation import ToTensors

    data = np.zeros((1, 1, 2, 2, 1), dtype=np.float32)
    floats = np.array([0.9999, 2.0001, 2.4, 2.6], dtype=np.float32).reshape(1, 1, 2, 2, 1)
    integers = np.array([1, 2, 3000, 3001], dtype=np.int16).reshape(1, 1, 2, 2, 1)
    assert ToTensors()(data=data, seg=floats)["target"].flatten().tolist() == [1, 2, 2, 3]
    out = ToTensors()(data=data, seg=integers)["target"]
    assert out.dtype == torch.int16 and out.flatten().tolist() == [1, 2, 3000, 3001]
