"""Plans made by hand for preprocessing tests, so that the target spacing can be chosen freely.

The normalisation comes from the real rules and fingerprint; only the network part, which
preprocessing does not read, is a fixed small configuration.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.config import NetworkConfig
from nnsam3d.planners.fingerprint_extraction import extract_fingerprint
from nnsam3d.planners.normalization_rules import channel_normalizations
from nnsam3d.schemas.plans import MemoryBudget, Plans


def _dataset_state(dataset: Path) -> tuple:
    """Name, size and modification time of every file of the dataset: changes when a test edits it."""
    files = sorted(path for path in dataset.rglob("*") if path.is_file())
    return tuple((str(path.relative_to(dataset)), path.stat().st_size, path.stat().st_mtime_ns) for path in files)


def make_plans(
    dataset: Path, target_spacing=None, use_nonzero_mask: bool = False, *, fingerprints: dict | None = None
) -> Plans:
    """Plans for ``dataset`` with ``target_spacing`` (default: the first case's spacing).

    ``fingerprints``: a cache of extracted fingerprints, reused while the dataset's files are unchanged.
    """
    description = DatasetDescription.from_file(dataset / "dataset.json")
    fingerprints = {} if fingerprints is None else fingerprints
    key = (dataset, _dataset_state(dataset))
    if key not in fingerprints:
        fingerprints[key] = extract_fingerprint(dataset, description, dataset.name, num_processes=1)
    fingerprint = fingerprints[key]
    return Plans(
        dataset_name=dataset.name,
        target_spacing=target_spacing or fingerprint.spacings[0],
        normalization=channel_normalizations(
            description.channel_names, fingerprint.intensity_statistics, use_nonzero_mask
        ),
        median_shape=fingerprint.shapes_after_cropping[0],
        network=NetworkConfig(
            backbone="vit_tiny",
            in_channels=description.num_channels,
            num_classes=description.num_classes,
            patch_size=(8, 32, 32),
            token_size=(2, 8, 8),
            window_size=(4, 4, 4),
        ),
        batch_size=2,
        memory=MemoryBudget(target_bytes=2**30, estimate_bytes=2**28, precision="fp32"),
    )


@pytest.fixture
def plans_for():
    """``plans_for(dataset_dir, target_spacing=None, use_nonzero_mask=False) -> Plans``.

    Extracting the fingerprint reads every case, so it is done once per dataset and test.
    """
    return partial(make_plans, fingerprints={})
