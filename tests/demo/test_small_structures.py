"""The small-structure dataset: every labelled structure has 15-60 voxels on the grid the planner
keeps, unlabelled look-alike decoys exist, the same seed gives the same files, and the folder
passes the integrity check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnsam3d.demo.small_structures import (
    MAX_VOXELS,
    MIN_VOXELS,
    SMALL_STRUCTURE_LABELS,
    decoy_masks,
    generate_small_structure_dataset,
    small_structure_phantom,
    small_structure_spec,
)
from nnsam3d.io.image_io import read_channels, read_segmentation
from nnsam3d.planners.integrity import verify_dataset_integrity
from nnsam3d.planners.spacing import target_spacing

SPEC = small_structure_spec(num_training=3, num_test=2)


def _component_sizes(mask: np.ndarray) -> list[int]:
    components, _ = ndimage.label(mask)
    return np.bincount(components.ravel())[1:].tolist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_small_structure_dataset(tmp_path_factory.mktemp("raw"), SPEC)


def test_every_labelled_structure_has_15_to_60_voxels_on_the_planners_grid(dataset):
    label_files = sorted(dataset.glob("labels*/*.nii.gz"))
    assert len(label_files) == SPEC.num_training + SPEC.num_test
    spacings, shapes = [], []
    for path in label_files:
        label, geometry = read_segmentation(path)
        spacings.append(geometry.spacing)
        shapes.append(label.shape)
        for name, value in SMALL_STRUCTURE_LABELS.items():
            sizes = _component_sizes(label == value)
            assert sizes, f"{path.name}: no {name}"
            assert all(MIN_VOXELS <= size <= MAX_VOXELS for size in sizes), (path.name, name, sizes)
    # The planner resamples to the median spacing: the files' own, so the sizes hold for the network.
    assert target_spacing(spacings, shapes) == pytest.approx(SPEC.spacing)


def test_decoys_look_like_nodules_but_are_not_labelled():
    phantom = small_structure_phantom(np.random.default_rng(3), SPEC)
    sizes = _component_sizes(phantom.decoys)
    assert len(sizes) >= 2 and all(MIN_VOXELS <= size <= MAX_VOXELS for size in sizes)
    assert not phantom.label[phantom.decoys].any()
    body = phantom.image[0][(phantom.label == 0) & ~phantom.decoys & (phantom.image[0] > -500)]
    decoy, nodule = phantom.image[0][phantom.decoys], phantom.image[0][phantom.label == SMALL_STRUCTURE_LABELS["nodule"]]
    assert np.median(body) + 30 < decoy.mean() < nodule.mean()      # visible, and fainter than nodules


def test_the_replayed_decoys_are_where_the_files_show_unlabelled_bright_blobs(dataset):
    for case_id, decoys in decoy_masks(SPEC).items():
        folder = "Tr" if int(case_id[-3:]) < SPEC.num_training else "Ts"
        image, _ = read_channels([dataset / f"images{folder}" / f"{case_id}_0000.nii.gz"])
        label, _ = read_segmentation(dataset / f"labels{folder}" / f"{case_id}.nii.gz")
        assert decoys.shape == label.shape and decoys.sum() >= 2 * MIN_VOXELS
        assert not label[decoys].any()
        assert image[0][decoys].mean() > np.median(image[0][(label == 0) & ~decoys & (image[0] > -500)]) + 60


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another(dataset, tmp_path):
    again = generate_small_structure_dataset(tmp_path / "again", SPEC)
    other = generate_small_structure_dataset(tmp_path / "other", small_structure_spec(num_training=1, num_test=0, seed=1))
    first = sorted(p.relative_to(dataset) for p in dataset.rglob("*.nii.gz"))
    assert first == sorted(p.relative_to(again) for p in again.rglob("*.nii.gz"))
    for relative in first:
        a, _ = read_channels([dataset / relative])
        b, _ = read_channels([again / relative])
        assert np.array_equal(a, b), relative
    case = first[0]
    assert not np.array_equal(read_channels([dataset / case])[0], read_channels([other / case])[0])


def test_the_folder_passes_the_integrity_check(dataset):
    assert verify_dataset_integrity(dataset, num_processes=1) == []


def test_anisotropic_spacing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="isotropic"):
        generate_small_structure_dataset(tmp_path, small_structure_spec(spacing=(3.0, 1.0, 1.0)))
