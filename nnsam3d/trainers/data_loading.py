"""Random training patches read from the memory-mapped preprocessed cases, and batch streams.

A batch holds ``batch_size`` patches; the last ``foreground_samples`` of them are centred on a
foreground voxel of a class drawn uniformly among the classes present in the case (so that a
small lesion is seen as often as a large organ in the cases that have both); the others are
placed uniformly at random. Only the patch is read from the ``.npy`` files; where a patch
reaches beyond the image, it is padded (image with 0, the normalised mean; labels with
background).

Randomness comes from numpy's global generator, which batchgenerators seeds in each
background worker and which the trainer saves in its checkpoints, so a run with 0 workers
resumes on exactly the same batches.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.trainers.cropped_spatial_transform import CroppedSpatialTransform

RANDOM_CENTRE = -1
"""``centre_class`` of a patch that was not centred on foreground."""


def patch_origin(
    image_shape: Sequence[int], patch_size: Sequence[int], rng,
    centre: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Lower corner (voxels, may be negative) of a patch inside an image of ``image_shape``.

    Without ``centre`` the patch is placed uniformly among the positions that keep it inside
    the image; along an axis where the image is smaller than the patch, the image is placed
    uniformly inside the patch instead. With ``centre`` the patch is centred on that voxel,
    then shifted as little as needed to lie inside the image (along axes where the image is
    large enough), so that it never shows padding where image exists; the voxel stays inside.
    rng: ``numpy.random`` or a ``RandomState`` (anything with ``randint``).
    """
    origin = []
    for axis, (size, patch) in enumerate(zip(image_shape, patch_size)):
        low, high = min(0, size - patch), max(0, size - patch)
        if centre is None:
            origin.append(int(rng.randint(low, high + 1)))
        else:
            origin.append(int(np.clip(int(centre[axis]) - patch // 2, low, high)))
    return tuple(origin)


def read_patch(array: np.ndarray, origin: Sequence[int], patch_size: Sequence[int], pad_value: float = 0,
               out: np.ndarray | None = None) -> np.ndarray:
    """(C, *patch_size) crop of a (C, z, y, x) array starting at ``origin``, padded outside it.

    Only the overlapping region is read, so a memory-mapped array stays on disk. ``out``: the
    (C, *patch_size) array to write into (a sample of a batch), else a new one. Only the padding
    is filled: at vit_b's patches the read blocks are hundreds of MB, and filling them whole, then
    stacking them into the batch, took a third of a batch's CPU time.
    """
    spatial = array.shape[1:]
    if out is None:
        out = np.empty((array.shape[0], *patch_size), dtype=array.dtype)
    elif out.shape != (array.shape[0], *patch_size):
        raise ValueError(f"out has shape {out.shape}, expected {(array.shape[0], *patch_size)}")
    source, target = [slice(None)], [slice(None)]
    for axis, (start, patch, size) in enumerate(zip(origin, patch_size, spatial)):
        low, high = max(start, 0), min(start + patch, size)
        first, last = low - start, low - start + max(0, high - low)
        source.append(slice(low, max(low, high)))
        target.append(slice(first, last))
        # The slabs before and after the image along this axis (corners may be filled twice).
        before, after = [slice(None)] * out.ndim, [slice(None)] * out.ndim
        before[1 + axis], after[1 + axis] = slice(0, first), slice(last, patch)
        out[tuple(before)] = pad_value
        out[tuple(after)] = pad_value
    out[tuple(target)] = array[tuple(source)]
    return out


def foreground_centre(
    class_locations: Mapping[int, np.ndarray], rng, ignore_label: int | None = None
) -> tuple[int, tuple[int, ...]] | None:
    """(class, voxel) drawn uniformly among the classes present, then among their voxels; None if none.

    ``ignore_label`` (unannotated voxels) is not a class and is never drawn. Only the drawn
    class's coordinates are read (the store keeps only non-empty classes)."""
    present = sorted(label for label in class_locations if label not in (0, ignore_label))
    if not present:
        return None
    label = present[rng.randint(len(present))]
    coords = class_locations[label]
    return label, tuple(int(v) for v in coords[rng.randint(len(coords))])


class PatchDataLoader(SlimDataLoaderBase):
    """Infinite stream of batches of random patches, for batchgenerators' augmenters.

    patch_size: the network's patch (voxels, z, y, x). read_size: the block around it (default:
    the patch), larger when spatial augmentation rotates and scales the block and crops the patch
    from its centre, so that rotated corners hold image, not padding. The patch is placed first
    (inside the image where the image is large enough) and the block is centred on it, so the
    centre class sits inside the final patch. spatial: the training's spatial transform, run
    while reading: of each block only the region its draw covers is read (a quarter of the block
    for an unrotated patch of the 24 GiB vit_b plan), and the batch holds patches; its block is
    the read size.

    Each batch is a dict: ``data`` (B, C, *size) float32, ``seg`` (B, 1, *size) int16, where
    size is the patch with a spatial transform, else the read size; ``keys`` (case identifiers)
    and ``centre_class`` (the class a patch is centred on, ``RANDOM_CENTRE`` for the others).
    All draws of a batch's placements come before its spatial transforms' draws, as when the
    spatial transform ran on whole blocks after the loader.
    """

    def __init__(self, data_folder: str | os.PathLike, case_ids: Sequence[str], batch_size: int,
                 patch_size: Sequence[int], foreground_samples: int, read_size: Sequence[int] | None = None,
                 ignore_label: int | None = None, spatial: CroppedSpatialTransform | None = None):
        if not case_ids:
            raise ValueError("a data loader needs at least one case")
        if not 0 <= foreground_samples <= batch_size:
            raise ValueError(f"foreground_samples must be in 0..{batch_size}, got {foreground_samples}")
        super().__init__(None, batch_size, None)
        self.data_folder = Path(data_folder)
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        if spatial is not None:
            if spatial.patch_size != self.patch_size or read_size not in (None, spatial.block_size):
                raise ValueError(f"the spatial transform maps {spatial.block_size} to {spatial.patch_size}; "
                                 f"the loader has patch {self.patch_size}, read size {read_size}")
            read_size = spatial.block_size
        self.spatial = spatial
        self.read_size = tuple(int(p) for p in (read_size or patch_size))
        if any(r < p for r, p in zip(self.read_size, self.patch_size)):
            raise ValueError(f"read_size {self.read_size} is smaller than patch_size {self.patch_size}")
        self.foreground_samples = int(foreground_samples)
        self.ignore_label = ignore_label
        self._store = PreprocessedCaseStore(self.data_folder)

    def place(self, case_id: str, centre_on_foreground: bool, rng) -> tuple[tuple[int, ...], int]:
        """(lower corner of the block, may be negative; centre class) of a random patch of a case."""
        centre, centre_class = None, RANDOM_CENTRE
        if centre_on_foreground:
            chosen = foreground_centre(self._store.load_class_locations(case_id), rng, self.ignore_label)
            if chosen is not None:
                centre_class, centre = chosen
        shape = self._store.load_data(case_id).shape[1:]
        origin = patch_origin(shape, self.patch_size, rng, centre)
        return tuple(o - (r - p) // 2 for o, r, p in zip(origin, self.read_size, self.patch_size)), centre_class

    def read_region(self, case_id: str, block_origin, low, high, data_out=None, seg_out=None):
        """(data, seg) of the block's voxels [low, high) per axis, padded outside the image (image
        with 0, labels with background); into ``data_out``/``seg_out`` where given."""
        start = tuple(int(o) + int(a) for o, a in zip(block_origin, low))
        size = tuple(int(b) - int(a) for a, b in zip(low, high))
        return (read_patch(self._store.load_data(case_id), start, size, 0.0, data_out),
                read_patch(self._store.load_segmentation(case_id), start, size, 0, seg_out))

    def generate_train_batch(self) -> dict:
        rng = np.random  # numpy's global generator (see the module docstring)
        first_foreground = self.batch_size - self.foreground_samples
        keys = [self.case_ids[i] for i in rng.randint(len(self.case_ids), size=self.batch_size)]
        placements = [self.place(case_id, index >= first_foreground, rng) for index, case_id in enumerate(keys)]
        # Every case has the dataset's channels (checked when planning), stored float32 / int16.
        channels = self._store.load_data(keys[0]).shape[0]
        size = self.read_size if self.spatial is None else self.patch_size
        data = np.empty((self.batch_size, channels, *size), dtype=np.float32)
        seg = np.empty((self.batch_size, 1, *size), dtype=np.int16)
        for index, (case_id, (origin, _)) in enumerate(zip(keys, placements)):
            if self.spatial is None:
                self.read_region(case_id, origin, (0, 0, 0), self.read_size, data[index], seg[index])
            else:
                self.spatial.augment_sample(functools.partial(self.read_region, case_id, origin),
                                            data[index], seg[index])
        return {"data": data, "seg": seg, "keys": keys, "centre_class": [c for _, c in placements]}


def foreground_samples_per_batch(batch_size: int, foreground_fraction: float) -> int:
    """Patches per batch centred on foreground: ``round(B * fraction)``, at least 1 if the fraction is > 0."""
    count = int(round(batch_size * foreground_fraction))
    return min(batch_size, max(count, 1 if foreground_fraction > 0 else 0))


def start_batch_stream(loader: PatchDataLoader, transform, num_workers: int, seed: int,
                       pin_memory: bool = False) -> Iterator[dict]:
    """Augmented batches from ``loader``: in this process (0 workers) or in background processes.

    Background workers (``NonDetMultiThreadedAugmenter``) hand over whichever batch is ready
    first, so the model never waits for a slow one; each worker gets its own seed derived from
    ``seed``. Call ``stop_batch_stream`` when done.
    """
    if num_workers <= 0:
        return SingleThreadedAugmenter(loader, transform)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(num_workers)]
    return NonDetMultiThreadedAugmenter(
        loader, transform, num_processes=num_workers, num_cached=max(2, num_workers), seeds=seeds,
        pin_memory=pin_memory,
    )


def stop_batch_stream(stream) -> None:
    """Shut background workers down (no-op for the in-process stream)."""
    finish = getattr(stream, "_finish", None)
    if finish is not None:
        finish()
