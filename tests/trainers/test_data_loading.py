"""Patch sampling from the memory-mapped store: placement, padding, foreground oversampling, workers."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.trainers.augmentation import read_size_for, settings_for, spatial_transform, training_transforms
from nnsam3d.trainers.batch_streams import training_loader
from nnsam3d.trainers.data_loading import (
    RANDOM_CENTRE,
    PatchDataLoader,
    foreground_samples_per_batch,
    patch_origin,
    read_patch,
    start_batch_stream,
    stop_batch_stream,
)
from nnsam3d.trainers.distributed import split_batch
from nnsam3d.trainers.reference_transforms import reference_training_transforms

SHAPE = (12, 40, 40)


def _properties(case_id: str, shape) -> CaseProperties:
    affine = tuple(tuple(row) for row in np.eye(4))
    return CaseProperties(case_id, ImageGeometry(shape[::-1], affine), (1.0, 1.0, 1.0), shape,
                          ((0, shape[0]), (0, shape[1]), (0, shape[2])), shape, (1.0, 1.0, 1.0), shape)


def _write_cases(folder, rare_in: int = 1) -> PreprocessedCaseStore:
    """Four cases with a large class 1 and a tiny class 2 (a 2x2x2 cube, only in ``rare_in`` cases).

    The image holds each voxel's label as intensity, so a patch's content can be checked.
    """
    store = PreprocessedCaseStore(folder)
    for index in range(4):
        label = np.zeros(SHAPE, dtype=np.int16)
        label[2:10, 5:35, 5:35] = 1
        if index < rare_in:
            label[6:8, 30:32, 30:32] = 2
        locations = {k: np.argwhere(label == k) for k in (1, 2) if (label == k).any()}
        store.write_case(f"c{index}", label[None].astype(np.float32), label[None],
                         _properties(f"c{index}", SHAPE), locations)
    return store


def test_patch_origin_keeps_patches_inside_large_images_and_centres_small_ones():
    rng = np.random.RandomState(0)
    for _ in range(200):
        origin = patch_origin((50, 60, 70), (16, 32, 32), rng)
        assert all(0 <= o <= s - p for o, s, p in zip(origin, (50, 60, 70), (16, 32, 32)))
        small = patch_origin((8, 60, 70), (16, 32, 32), rng)
        assert -8 <= small[0] <= 0  # image placed anywhere inside the patch along z
    # Centred on a voxel where possible, shifted inside the image at the border.
    assert patch_origin((50, 60, 70), (16, 32, 32), rng, centre=(25, 30, 35)) == (17, 14, 19)
    assert patch_origin((50, 60, 70), (16, 32, 32), rng, centre=(0, 59, 35)) == (0, 28, 19)


def test_read_patch_reads_only_the_overlap_and_pads():
    array = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    patch = read_patch(array, (-1, 2, 3), (3, 4, 4), pad_value=-7)
    assert patch.shape == (2, 3, 4, 4)
    assert np.all(patch[:, 0] == -7)  # z = -1 is outside
    np.testing.assert_array_equal(patch[:, 1:, :3, :3], array[:, 0:2, 2:5, 3:6])
    assert np.all(patch[:, :, 3:, :] == -7) and np.all(patch[:, :, :, 3:] == -7)


def reference_read(array, origin, size, pad_value):
    """The crop by its definition: every voxel of the block, from the array or the pad value."""
    block = np.full((array.shape[0], *size), pad_value, dtype=array.dtype)
    for index in np.ndindex(*size):
        voxel = tuple(o + i for o, i in zip(origin, index))
        if all(0 <= v < n for v, n in zip(voxel, array.shape[1:])):
            block[(slice(None), *index)] = array[(slice(None), *voxel)]
    return block


@pytest.mark.parametrize("origin", [(-1, 2, 3), (0, 0, 0), (1, 1, 1), (-2, -3, -1), (2, 3, 4), (-9, 0, 0)])
def test_read_patch_into_a_batch_array_fills_every_voxel(origin):
    """Read into a sample of a batch (``out`` full of NaN, as ``np.empty`` may be): only the padding
    is filled, so every voxel must come from the array or the pad value, whichever sides pad."""
    rng = np.random.default_rng(0)
    array = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    size = (4, 6, 7)
    expected = reference_read(array, origin, size, -7.0)
    out = np.full((3, 2, *size), np.nan, dtype=np.float32)
    assert read_patch(array, origin, size, -7.0, out[1]) is not None
    np.testing.assert_array_equal(out[1], expected)
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()  # the neighbours untouched
    np.testing.assert_array_equal(read_patch(array, origin, size, -7.0), expected)
    with pytest.raises(ValueError, match="out has shape"):
        read_patch(array, origin, size, -7.0, out[1, :1])


def test_a_batch_is_its_samples_drawn_in_order(tmp_path):
    """The batch arrays are written in place; they hold exactly the blocks placed and read one by
    one into new arrays, in the same order from the same random state, read larger than the image
    (padded everywhere)."""
    store = _write_cases(tmp_path)
    loader = PatchDataLoader(store.folder, store.case_ids(), 3, (8, 24, 24), 2, read_size=(16, 56, 48))
    np.random.seed(5)
    batch = loader.generate_train_batch()
    np.random.seed(5)
    keys = [loader.case_ids[i] for i in np.random.randint(len(loader.case_ids), size=3)]
    placements = [loader.place(key, index >= 1, np.random) for index, key in enumerate(keys)]
    samples = [(*loader.read_region(key, origin, (0, 0, 0), loader.read_size), centre_class)
               for key, (origin, centre_class) in zip(keys, placements)]
    assert batch["keys"] == keys and batch["centre_class"] == [s[2] for s in samples]
    assert batch["data"].dtype == np.float32 and batch["seg"].dtype == np.int16
    np.testing.assert_array_equal(batch["data"], np.stack([s[0] for s in samples]))
    np.testing.assert_array_equal(batch["seg"], np.stack([s[1] for s in samples]))


def test_foreground_share_of_a_batch_and_its_split_over_ranks():
    assert foreground_samples_per_batch(2, 0.33) == 1
    assert foreground_samples_per_batch(12, 0.33) == 4
    assert foreground_samples_per_batch(4, 0.0) == 0
    # Over 3 ranks a batch of 7 with 3 foreground patches: sizes 3, 2, 2; the last 3 samples are foreground.
    shares = [split_batch(7, 3, 3, rank) for rank in range(3)]
    assert shares == [(3, 0), (2, 1), (2, 2)]
    assert sum(b for b, _ in shares) == 7 and sum(f for _, f in shares) == 3
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch(2, 1, 4, 0)


def test_oversampling_centres_a_third_of_patches_on_foreground_and_finds_rare_classes(tmp_path):
    store = _write_cases(tmp_path, rare_in=1)
    loader = PatchDataLoader(store.folder, ["c0", "c1", "c2", "c3"], batch_size=3, patch_size=(8, 16, 16),
                             foreground_samples=1)
    np.random.seed(0)
    centres, rare_patches = Counter(), 0
    for _ in range(300):
        batch = next(loader)
        assert batch["data"].shape == (3, 1, 8, 16, 16) and batch["data"].dtype == np.float32
        assert batch["seg"].shape == (3, 1, 8, 16, 16)
        assert batch["centre_class"][:2] == [RANDOM_CENTRE, RANDOM_CENTRE]
        for key, centre_class, seg in zip(batch["keys"], batch["centre_class"], batch["seg"]):
            centres[centre_class] += 1
            if centre_class != RANDOM_CENTRE:
                # The chosen voxel is the patch centre (all cases are large enough here).
                assert seg[0, 4, 8, 8] == centre_class
            rare_patches += bool((seg == 2).any())
    assert centres[RANDOM_CENTRE] == 600
    # Class 2 lives in 1 case of 4 and covers 8 voxels, yet it is chosen in about half of that
    # case's foreground patches: 300 * 1/4 * 1/2 ~ 37.
    assert 20 <= centres[2] <= 60
    assert centres[1] + centres[2] == 300
    assert rare_patches >= centres[2]


def test_patches_of_images_smaller_than_the_patch_are_padded_with_background(tmp_path):
    store = _write_cases(tmp_path)
    loader = PatchDataLoader(store.folder, ["c0"], batch_size=2, patch_size=(16, 48, 48), foreground_samples=1)
    batch = next(loader)
    assert batch["seg"].shape == (2, 1, 16, 48, 48)
    for seg, data in zip(batch["seg"], batch["data"]):
        assert (seg > 0).sum() == (np.load(store.folder / "c0_seg.npy") > 0).sum()  # whole image inside
        assert np.all(data[seg == 0] == 0)


@pytest.mark.parametrize("patch, spacing, anisotropic_axis", [((8, 16, 16), (1.0, 1.0, 1.0), None),
                                                              ((4, 32, 24), (4.0, 1.0, 1.0), 0)])
def test_spatial_transform_while_reading_equals_whole_blocks_through_batchgenerators(
        tmp_path, patch, spacing, anisotropic_axis):
    """The loader that runs the spatial transform on the regions it reads gives the batches of the
    loader that reads whole blocks followed by batchgenerators' own pipeline: same seed, same
    cases, same patches (blocks larger than these cases: padding on every side)."""
    store = _write_cases(tmp_path, rare_in=2)
    rng = np.random.default_rng(0)
    for case_id in store.case_ids():  # texture, so that interpolation shows in the values
        data = np.load(store.folder / f"{case_id}.npy", mmap_mode="r+")
        data += rng.normal(size=data.shape).astype(np.float32)
        data.flush()
    settings = replace(settings_for(patch, spacing, anisotropic_axis), p_rotation=0.5, p_scale=0.5)
    fast = training_loader(store.folder, store.case_ids(), 3, settings, foreground_samples=1)
    whole = PatchDataLoader(store.folder, store.case_ids(), 3, settings.patch_size, 1, read_size_for(settings))
    assert whole.read_size == fast.read_size and any(r > s for r, s in zip(whole.read_size, SHAPE))
    pipeline, reference = training_transforms(settings), reference_training_transforms(settings)
    for seed in range(5):
        random.seed(seed), np.random.seed(seed)
        expected = reference(**whole.generate_train_batch())
        random.seed(seed), np.random.seed(seed)
        got = pipeline(**fast.generate_train_batch())
        assert got["keys"] == expected["keys"] and got["centre_class"] == expected["centre_class"]
        torch.testing.assert_close(got["data"], expected["data"], rtol=0, atol=1e-5)
        assert torch.equal(got["target"], expected["target"])


def test_a_spatial_transform_must_fit_the_loader(tmp_path):
    store = _write_cases(tmp_path)
    spatial = spatial_transform(settings_for((8, 16, 16), (1.0, 1.0, 1.0), anisotropic_axis=None))
    with pytest.raises(ValueError, match="spatial transform maps"):
        PatchDataLoader(store.folder, ["c0"], 2, (8, 16, 20), 1, spatial=spatial)
    with pytest.raises(ValueError, match="spatial transform maps"):
        PatchDataLoader(store.folder, ["c0"], 2, (8, 16, 16), 1, read_size=(8, 16, 16), spatial=spatial)


def test_background_workers_deliver_augmented_batches(tmp_path):
    store = _write_cases(tmp_path)
    settings = settings_for((8, 16, 16), (1.0, 1.0, 1.0), anisotropic_axis=None)
    loader = training_loader(store.folder, ["c0", "c1"], batch_size=2, settings=settings, foreground_samples=1)
    stream = start_batch_stream(loader, training_transforms(settings), num_workers=1, seed=3)
    try:
        batches = [next(stream) for _ in range(3)]
        workers = list(stream._processes)
        assert len(workers) == 1 and all(w.is_alive() for w in workers)  # produced in another process
    finally:
        stop_batch_stream(stream)
    for batch in batches:
        assert tuple(batch["data"].shape) == (2, 1, 8, 16, 16)
        assert tuple(batch["target"].shape) == (2, 1, 8, 16, 16)
        assert set(batch["target"].unique().tolist()) <= {0, 1, 2}
    assert not any(w.is_alive() for w in workers)  # shut down cleanly


@pytest.mark.parametrize("cores, world_size, expected", [(16, 1, 12), (8, 1, 7), (2, 1, 1), (16, 2, 7), (64, 4, 12)])
def test_default_workers_per_gpu_leave_a_core_per_rank_and_stop_at_twelve(cores, world_size, expected, monkeypatch):
    """Every core but one per rank, at most nnU-Net's 12: a batch of the 24 GiB vit_b plan costs
    about 6 s of a core against a 1 s GPU step (benchmarks/augmentation_speed.py)."""
    import torch

    from nnsam3d.trainers import batch_streams
    from nnsam3d.trainers.distributed import DistributedContext

    monkeypatch.setattr(batch_streams.os, "cpu_count", lambda: cores)
    gpu = DistributedContext(world_size=world_size, device=torch.device("cuda", 0))
    assert batch_streams.default_num_workers(gpu) == expected
    assert batch_streams.default_num_workers(DistributedContext()) == 0  # the CPU trains in-process
