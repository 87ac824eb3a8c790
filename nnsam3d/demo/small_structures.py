"""A CT-like dataset of small structures (15-60 voxels each), to test what clicks do to them.

Why: on the demo phantom the smallest class (the lesion) has hundreds of voxels, and a click
ball of the simulated user covers a few dozen; whether a click is respected, and whether a
false positive the user clicks away goes, only shows on structures about the size of a click.

Each case is a body in air with a spine (bright, not labelled) and an organ-like region (not
labelled), and:

* class 1 "nodule": round blobs, some inside or touching the organ, of varied contrast
  (``NODULE_HU``: the faint ones are hard);
* class 2 "vessel": short tubes (a segment with a radius of about one voxel), brighter;
* decoys, NOT labelled: round blobs of the nodules' size but fainter (``DECOY_HU``, overlapping
  only the faint end of the nodules' range), so that an automatic model makes false positives
  and false negatives, and the user has something to click away.

Every labelled structure and every decoy has between ``MIN_VOXELS`` and ``MAX_VOXELS`` voxels
and is kept at least ``GAP_VOXELS`` voxels from the others, so each is its own connected
component of its class. The spacing is isotropic and the same for every case, so the planner's
target spacing (the median spacing per axis, :mod:`nnsam3d.planners.spacing`) is the files'
spacing: no resampling, and the sizes hold on the network grid. Files are written in a mix of
orientations through :func:`synthetic_dataset.generate_synthetic_dataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnsam3d.demo.synthetic_dataset import CT_INTENSITY, SyntheticDatasetSpec, ellipsoid, generate_synthetic_dataset

SMALL_STRUCTURE_LABELS = {"nodule": 1, "vessel": 2}
MIN_VOXELS, MAX_VOXELS = 15, 60
GAP_VOXELS = 2
"""Free voxels kept between two structures (so that 6- and 26-connected components agree)."""

NODULE_HU = (200.0, 360.0)
VESSEL_HU = (280.0, 440.0)
DECOY_HU = (150.0, 220.0)
"""Intensities (HU) drawn per structure; body 30, organ 110, spine 700 HU (``CT_INTENSITY``). The
CT normalisation clips to the labelled voxels' 0.5-99.5 percentiles (about 130..385 HU here, the
floor set by the blurred borders of faint nodules), so decoys must sit above about 130 HU to be
seen at all: with decoys at 90-160 HU (the first version) the floor was 98 HU and half of them
were clipped away. After blur and noise a decoy averages 120-195 HU, a nodule 170-305."""

NODULES_PER_CASE = (3, 5)
VESSELS_PER_CASE = (2, 3)
DECOYS_PER_CASE = (3, 5)
"""Inclusive ranges of how many of each a case gets."""


def small_structure_spec(**overrides) -> SyntheticDatasetSpec:
    """The dataset's spec (``Dataset991_SmallStructures``: 15 training and 6 test cases of
    24 x 64 x 64 voxels at 1.5 mm isotropic); keyword arguments override fields."""
    defaults = dict(dataset_id=991, name="SmallStructures", num_training=15, num_test=6, shape=(24, 64, 64),
                    spacing=(1.5, 1.5, 1.5), orientations=("RAS", "LPS", "ASL", "PIR"), shape_jitter=0.0,
                    labels=dict(SMALL_STRUCTURE_LABELS))
    return SyntheticDatasetSpec(**{**defaults, **overrides})


@dataclass
class SmallStructurePhantom:
    """One case in canonical (z, y, x) order: image (1, z, y, x) HU, label (z, y, x) uint8,
    decoys (z, y, x) bool (unlabelled look-alikes), spacing (mm)."""

    image: np.ndarray
    label: np.ndarray
    decoys: np.ndarray
    spacing: tuple[float, float, float]


class _Placer:
    """Places structures one by one where they fit: inside ``allowed``, ``GAP_VOXELS`` from the
    others, with ``MIN_VOXELS``..``MAX_VOXELS`` voxels; retries with fresh draws."""

    def __init__(self, rng: np.random.Generator, allowed: np.ndarray):
        self.rng = rng
        self.allowed = allowed
        self.occupied = np.zeros(allowed.shape, dtype=bool)
        self.index = np.indices(allowed.shape, dtype=np.float32)

    def place(self, draw, centres: np.ndarray, attempts: int = 200) -> np.ndarray | None:
        """``draw(centre)`` → candidate mask; centres: (N, 3) voxels to draw from. None if nothing fits."""
        blocked = ndimage.binary_dilation(self.occupied, iterations=GAP_VOXELS,
                                          structure=ndimage.generate_binary_structure(3, 3))
        for _ in range(attempts):
            centre = centres[self.rng.integers(len(centres))] + self.rng.uniform(-0.5, 0.5, size=3)
            mask = draw(centre)
            size = int(mask.sum())
            if MIN_VOXELS <= size <= MAX_VOXELS and not (mask & ~self.allowed).any() and not (mask & blocked).any():
                self.occupied |= mask
                return mask
        return None

    def blob(self, centre: np.ndarray) -> np.ndarray:
        radii = self.rng.uniform(1.4, 2.6, size=3)
        distance = sum(((self.index[axis] - centre[axis]) / radii[axis]) ** 2 for axis in range(3))
        return distance <= 1.0

    def tube(self, centre: np.ndarray) -> np.ndarray:
        direction = self.rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        half_length, radius = self.rng.uniform(2.5, 5.0), self.rng.uniform(0.9, 1.3)
        offset = self.index - centre[:, None, None, None]
        along = np.clip(np.tensordot(direction, offset, axes=1), -half_length, half_length)
        nearest = centre[:, None, None, None] + direction[:, None, None, None] * along
        return ((self.index - nearest) ** 2).sum(axis=0) <= radius ** 2


def small_structure_phantom(rng: np.random.Generator, spec: SyntheticDatasetSpec) -> SmallStructurePhantom:
    """One random case (see the module docstring); ``spec.shape`` and ``spec.spacing`` in voxels and mm."""
    shape, spacing = tuple(int(n) for n in spec.shape), tuple(float(s) for s in spec.spacing)
    extent = np.array(shape) * np.array(spacing)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = extent / 2
    body = ellipsoid(grid, centre, extent * np.array([0.6, 0.44, 0.46]))
    spine = ellipsoid(grid, centre + np.array([0.0, -0.27, 0.0]) * extent,
                      [extent[0] * 0.6, extent[1] * 0.07, extent[2] * 0.07]) & body
    organ_centre = centre + (np.array([0.0, 0.08, -0.14]) + rng.uniform(-0.04, 0.04, size=3)) * extent
    organ = ellipsoid(grid, organ_centre, extent * np.array([0.35, 0.2, 0.18]) * rng.uniform(0.9, 1.1)) & body & ~spine

    # Structures stay off the spine and the body's border; nodules like the organ's rim.
    allowed = ndimage.binary_erosion(body & ~ndimage.binary_dilation(spine, iterations=2), iterations=2)
    rim = allowed & ndimage.binary_dilation(organ, iterations=2) & ~ndimage.binary_erosion(organ, iterations=2)
    inside = np.argwhere(allowed)
    placer = _Placer(rng, allowed)
    label = np.zeros(shape, dtype=np.uint8)
    decoys = np.zeros(shape, dtype=bool)
    painted: list[tuple[np.ndarray, float]] = []
    for kind, counts, hu in (("nodule", NODULES_PER_CASE, NODULE_HU), ("vessel", VESSELS_PER_CASE, VESSEL_HU),
                             ("decoy", DECOYS_PER_CASE, DECOY_HU)):
        for number in range(int(rng.integers(counts[0], counts[1] + 1))):
            near_organ = kind == "nodule" and number % 2 == 0 and rim.any()
            draw = placer.tube if kind == "vessel" else placer.blob
            mask = placer.place(draw, np.argwhere(rim) if near_organ else inside)
            if mask is None:
                continue  # the case is full; fewer structures of this kind
            painted.append((mask, float(rng.uniform(*hu))))
            if kind == "decoy":
                decoys |= mask
            else:
                label[mask] = spec.labels[kind]
    if not (label == spec.labels["nodule"]).any():
        raise RuntimeError(f"no nodule fits a case of shape {shape}; use a larger spec.shape")

    image = np.full(shape, CT_INTENSITY["air"], dtype=np.float32)
    for tissue, mask in (("body", body), ("liver", organ), ("spine", spine)):
        image[mask] = CT_INTENSITY[tissue] * (1 + rng.uniform(-0.05, 0.05))
    for mask, hu in painted:
        image[mask] = hu
    image = ndimage.gaussian_filter(image, sigma=0.5)
    image += rng.normal(0.0, spec.noise_std, size=shape).astype(np.float32)
    return SmallStructurePhantom(np.rint(image)[None].astype(np.float32), label, decoys, spacing)


def small_structure_case(rng: np.random.Generator, spec: SyntheticDatasetSpec):
    """(image, label, spacing) of one case: the ``phantom`` contract of ``generate_synthetic_dataset``."""
    phantom = small_structure_phantom(rng, spec)
    return phantom.image, phantom.label, phantom.spacing


def decoy_masks(spec: SyntheticDatasetSpec | None = None) -> dict[str, np.ndarray]:
    """Case id → where its decoys are (canonical z, y, x), found by replaying the generator's random
    draws (the files do not record them), so that a benchmark can tell false positives on decoys
    from others. Valid for the files :func:`generate_small_structure_dataset` wrote with ``spec``."""
    spec = spec or small_structure_spec()
    rng = np.random.default_rng(spec.seed)
    return {f"{spec.name.lower()}_{index:03d}": small_structure_phantom(rng, spec).decoys
            for index in range(spec.num_training + spec.num_test)}


def generate_small_structure_dataset(raw_root: str | os.PathLike, spec: SyntheticDatasetSpec | None = None) -> Path:
    """Write ``Dataset991_SmallStructures`` (or ``spec``'s) under ``raw_root``; returns its folder.
    Deterministic by ``spec.seed``."""
    spec = spec or small_structure_spec()
    if len(set(spec.spacing)) != 1 or spec.case_spacings:
        raise ValueError("small structures need one isotropic spacing for every case and no shape jitter, so that "
                         "their voxel counts hold on the network grid")
    return generate_synthetic_dataset(raw_root, replace(spec, modality="CT", num_channels=1), small_structure_case)
