"""Synthetic CT- and MRI-like datasets in nnU-Net v2 format, for the demo and the tests.

Each case is a phantom: a body ellipsoid in air with a spine-like bright structure (not
labelled), and organ-like classes of very different sizes, a large "liver", a mid-sized
"kidney" and a small "lesion", with jittered positions and sizes and noisy intensities.
Cases are written with a mix of orientations (RAS, LPS, permuted axes, oblique affines) and
anisotropic spacing, so that the whole pipeline's geometry handling is exercised.

Generation happens in canonical (z, y, x) order with a RAS world, and each case's file is
then reoriented (flips and axis permutations, or an oblique affine), so the anatomy is the same
in world space whatever the file orientation is. Files are written in the format of
``spec.file_ending`` (``.nii.gz`` by default; ``.mha``, ``.nrrd`` through ``io.image_io``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from nibabel import orientations
from scipy import ndimage

from nnsam3d.io.atomic import write_json_atomic
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import write_volume_in_file_order
from nnsam3d.paths import dataset_folder_name

ORIENTATIONS = ("RAS", "LPS", "ASL", "oblique", "LAS", "PIR")
"""File orientations cycled across cases. 'oblique' is RAS rotated 12 degrees about z and 5 about x."""

CT_ORGANS = {"liver": 1, "kidney": 2, "lesion": 3}

# Mean intensity per tissue: CT in Hounsfield units; MRI channels in arbitrary scanner units.
CT_INTENSITY = {"air": -1000.0, "body": 30.0, "spine": 700.0, "liver": 110.0, "kidney": 190.0, "lesion": -60.0}
MRI_INTENSITY = (
    {"air": 0.0, "body": 300.0, "spine": 150.0, "liver": 520.0, "kidney": 700.0, "lesion": 120.0},
    {"air": 0.0, "body": 400.0, "spine": 100.0, "liver": 250.0, "kidney": 900.0, "lesion": 1100.0},
)


@dataclass
class SyntheticDatasetSpec:
    """What to generate.

    shape: canonical voxel shape (z, y, x) of each case before jitter.
    spacing: mm along (z, y, x); z coarse by default (anisotropic CT).
    case_spacings: when given, case i has spacing ``case_spacings[i % len(case_spacings)]``
        instead of ``spacing``, as in real cohorts (so preprocessing must resample).
    modality: "CT" (one channel, Hounsfield units) or "MRI" (``num_channels`` channels).
    orientations: file orientations cycled over cases.
    file_ending: format of the files (``.nii.gz``, ``.mha``, ``.nrrd``, ...; see ``io.image_io``).
    shape_jitter: each axis of each case varies by up to this fraction.
    """

    dataset_id: int = 990
    name: str = "SyntheticCT"
    num_training: int = 10
    num_test: int = 4
    shape: tuple[int, int, int] = (24, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    modality: str = "CT"
    num_channels: int = 1
    orientations: tuple[str, ...] = ORIENTATIONS
    shape_jitter: float = 0.1
    noise_std: float = 20.0
    seed: int = 0
    labels: dict[str, int] = field(default_factory=lambda: dict(CT_ORGANS))
    case_spacings: tuple[tuple[float, float, float], ...] | None = None
    file_ending: str = ".nii.gz"

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)

    def spacing_of_case(self, index: int) -> tuple[float, float, float]:
        """Spacing (mm, z, y, x) of case ``index``."""
        if self.case_spacings:
            return tuple(self.case_spacings[index % len(self.case_spacings)])
        return tuple(self.spacing)

    def channel_names(self) -> dict[str, str]:
        if self.modality == "CT":
            return {"0": "CT"}
        return {str(i): ("T1", "T2", "FLAIR", "DWI")[i % 4] for i in range(self.num_channels)}


def ellipsoid(grid: tuple[np.ndarray, ...], center_mm, radii_mm) -> np.ndarray:
    total = np.zeros(grid[0].shape, dtype=np.float32)
    for axis_coords, c, r in zip(grid, center_mm, radii_mm):
        total += ((axis_coords - c) / r) ** 2
    return total <= 1.0


def phantom_case(
    rng: np.random.Generator, spec: SyntheticDatasetSpec
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One random phantom in canonical order.

    Returns (image (C, z, y, x) float32, label (z, y, x) uint8, spacing (z, y, x) mm).
    """
    shape = tuple(
        max(8, int(round(s * (1 + rng.uniform(-spec.shape_jitter, spec.shape_jitter))))) for s in spec.shape
    )
    spacing = tuple(float(s) for s in spec.spacing)
    extent = np.array(shape) * np.array(spacing)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = extent / 2

    body = ellipsoid(grid, centre, extent * np.array([0.6, 0.42, 0.46]))
    spine_centre = centre + np.array([0.0, -0.25, 0.0]) * extent
    spine = ellipsoid(grid, spine_centre, [extent[0] * 0.6, extent[1] * 0.07, extent[2] * 0.07]) & body

    def jitter(scale: float) -> np.ndarray:
        return rng.uniform(-scale, scale, size=3)

    liver_centre = centre + (np.array([0.0, 0.05, -0.15]) + jitter(0.04)) * extent
    liver_radii = extent * np.array([0.32, 0.2, 0.17]) * rng.uniform(0.85, 1.15)
    liver = ellipsoid(grid, liver_centre, liver_radii) & body & ~spine

    kidney_centre = centre + (np.array([0.0, -0.12, 0.2]) + jitter(0.03)) * extent
    kidney_radii = extent * np.array([0.2, 0.07, 0.06]) * rng.uniform(0.85, 1.15)
    kidney = ellipsoid(grid, kidney_centre, kidney_radii) & body & ~spine & ~liver

    # A small lesion inside the liver: a few voxels across in-plane, one or two slices deep.
    offset = rng.uniform(-0.45, 0.45, size=3) * liver_radii
    lesion_radius_mm = float(rng.uniform(3.5, 5.5)) * min(spacing[1:])
    lesion_radii = [max(lesion_radius_mm, spacing[0] * 1.1), lesion_radius_mm, lesion_radius_mm]
    lesion = ellipsoid(grid, liver_centre + offset, lesion_radii) & liver

    tissues = {"body": body, "spine": spine, "liver": liver, "kidney": kidney, "lesion": lesion}
    label = np.zeros(shape, dtype=np.uint8)
    for organ, value in spec.labels.items():
        if organ in tissues:
            label[tissues[organ]] = value

    tables = (CT_INTENSITY,) if spec.modality == "CT" else tuple(
        MRI_INTENSITY[i % len(MRI_INTENSITY)] for i in range(spec.num_channels)
    )
    channels = []
    for channel_index, table in enumerate(tables):
        image = np.full(shape, table["air"], dtype=np.float32)
        for tissue in ("body", "spine", "liver", "kidney", "lesion"):
            image[tissues[tissue]] = table[tissue] * (1 + rng.uniform(-0.05, 0.05))
        image = ndimage.gaussian_filter(image, sigma=(0.4, 0.8, 0.8))
        noise_scale = spec.noise_std if spec.modality == "CT" else spec.noise_std * 2
        image += rng.normal(0.0, noise_scale, size=shape).astype(np.float32)
        if spec.modality != "CT":
            # MRI background is dark, not noisy; a bias field makes z-scoring per image matter.
            bias = 1 + 0.2 * (grid[2] / extent[2] - 0.5) * (1 if channel_index % 2 else -1)
            image = np.where(body, image * bias, 0.0)
        channels.append(image.astype(np.float32))
    return np.stack(channels), label, spacing


def _file_orientation(canonical: np.ndarray, spacing, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (z, y, x) array → (file-order array, affine) for the requested orientation."""
    ras = canonical.transpose(2, 1, 0)  # (x, y, z) = RAS axes
    ras_affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    ras_affine[:3, 3] = [-100.0, -120.0, -50.0]
    if orientation == "oblique":
        a, b = np.deg2rad(12.0), np.deg2rad(5.0)
        rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        rotation = np.eye(4)
        rotation[:3, :3] = rot_z @ rot_x
        return ras, rotation @ ras_affine
    transform = orientations.ornt_transform(
        orientations.axcodes2ornt(("R", "A", "S")), orientations.axcodes2ornt(tuple(orientation))
    )
    data = orientations.apply_orientation(ras, transform)
    affine = ras_affine @ orientations.inv_ornt_aff(transform, ras.shape)
    return np.ascontiguousarray(data), affine


def _save_volume(data: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    geometry = ImageGeometry(tuple(int(n) for n in data.shape), tuple(tuple(float(v) for v in row) for row in affine))
    write_volume_in_file_order(data.astype(dtype), geometry, path)


def write_case(
    folder_images: Path,
    folder_labels: Path | None,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    spacing,
    orientation: str,
    file_ending: str = ".nii.gz",
) -> None:
    """Write one case's channels (``CASE_XXXX``) and optional label in the given orientation."""
    image_dtype = np.int16 if np.all(np.abs(image) < 32000) and np.allclose(image, np.rint(image)) else np.float32
    for channel, volume in enumerate(image):
        data, affine = _file_orientation(volume, spacing, orientation)
        _save_volume(data, affine, folder_images / f"{case_id}_{channel:04d}{file_ending}", image_dtype)
    if label is not None and folder_labels is not None:
        data, affine = _file_orientation(label, spacing, orientation)
        _save_volume(data, affine, folder_labels / f"{case_id}{file_ending}", np.uint8)


def generate_synthetic_dataset(raw_root: str | os.PathLike, spec: SyntheticDatasetSpec | None = None,
                               phantom: Callable = phantom_case) -> Path:
    """Write ``DatasetXXX_Name/`` (dataset.json, imagesTr, labelsTr, imagesTs, labelsTs) under raw_root.

    ``labelsTs`` holds the test cases' reference labels so that predictions can be evaluated.
    phantom: ``(rng, spec) -> (image, label, spacing)`` of one case (:func:`phantom_case`'s
    contract), so that other phantoms (``demo.small_structures``) share the writing and orientations.
    Returns the dataset folder.
    """
    spec = spec or SyntheticDatasetSpec()
    rng = np.random.default_rng(spec.seed)
    dataset_dir = Path(raw_root) / spec.folder_name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (dataset_dir / sub).mkdir(parents=True, exist_ok=True)
    prefix = spec.name.lower()
    total = spec.num_training + spec.num_test
    for index in range(total):
        image, label, spacing = phantom(rng, replace(spec, spacing=spec.spacing_of_case(index)))
        if spec.modality == "CT":
            image = np.rint(image)
        training = index < spec.num_training
        case_id = f"{prefix}_{index:03d}"
        write_case(
            dataset_dir / ("imagesTr" if training else "imagesTs"),
            dataset_dir / ("labelsTr" if training else "labelsTs"),
            case_id,
            image,
            label,
            spacing,
            spec.orientations[index % len(spec.orientations)],
            spec.file_ending,
        )
    description = {
        "name": spec.name,
        "description": "Synthetic phantom generated by nnsam3d for demonstration and tests.",
        "channel_names": spec.channel_names(),
        "labels": {"background": 0, **spec.labels},
        "numTraining": spec.num_training,
        "file_ending": spec.file_ending,
    }
    write_json_atomic(dataset_dir / "dataset.json", description)
    return dataset_dir

