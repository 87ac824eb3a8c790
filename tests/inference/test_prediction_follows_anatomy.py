"""The whole file → preprocessing → sliding window → mirroring → export path puts every voxel's
prediction back where it came from, for RAS, LPS, permuted and oblique files.

Trained weights are not needed for that: a test network labels voxels by their intensity, and
the phantom's "organ" is an ellipsoid of its own intensity placed off centre along all three
axes. The network then finds the organ exactly when, and only when, no axis is swapped,
flipped or shifted on the way to the network and back into the file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam3d.demo.synthetic_dataset import write_case
from nnsam3d.evaluation.evaluate_folder import evaluate_folders
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import DatasetDescription

ORIENTATIONS = ("RAS", "LPS", "ASL", "PIR", "oblique")
LABELS = {"background": 0, "organ": 1, "other": 2, "more": 3}
BODY, ORGAN = 30.0, 110.0  # Hounsfield-like units; air is -1000


class IntensityLabeller(torch.nn.Module):
    """Test network: undoes the plans' CT normalisation and calls a voxel "organ" when its
    intensity is nearer the organ's than the body's. Voxel-wise: windows and mirroring cannot
    change its answer, so any error comes from the geometry."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        organ = (x[:, :1] * self.std + self.mean > (BODY + ORGAN) / 2).float()
        nothing = torch.zeros_like(organ)
        return torch.cat([1 - organ, organ, nothing, nothing], dim=1) * 10.0


def write_phantoms(folder, shape=(16, 46, 50), spacing=(3.0, 1.0, 1.0)) -> None:
    """One case per orientation: body ellipsoid in air, organ ellipsoid off centre, mild noise."""
    grid = np.indices(shape).astype(np.float32) + 0.5
    relative = [(grid[a] / shape[a]) for a in range(3)]
    body = sum(((relative[a] - 0.5) / 0.45) ** 2 for a in range(3)) <= 1
    organ = sum(((relative[a] - c) / r) ** 2 for a, c, r in zip(range(3), (0.62, 0.38, 0.32), (0.25, 0.18, 0.15))) <= 1
    rng = np.random.default_rng(0)
    for index, orientation in enumerate(ORIENTATIONS):
        image = np.where(organ, ORGAN, np.where(body, BODY, -1000.0)) + rng.normal(0, 5, shape)
        write_case(folder / "imagesTs", folder / "labelsTs", f"case_{index}", np.rint(image)[None],
                   organ.astype(np.uint8), spacing, orientation)


@pytest.mark.parametrize("target_spacing, least_dice", [((3.0, 1.0, 1.0), 1.0), ((2.0, 1.4, 1.4), 0.93)])
def test_predictions_land_on_the_anatomy_in_every_orientation(tmp_path, make_plans, target_spacing, least_dice):
    write_phantoms(tmp_path)
    description = DatasetDescription({"0": "CT"}, LABELS, 0, ".nii.gz")
    plans = make_plans(target_spacing=target_spacing)  # CT normalisation clipping to -200..400
    network = IntensityLabeller(plans.normalization[0].mean, plans.normalization[0].std)
    predictor = Predictor([network], plans, description, torch.device("cpu"), step_size=0.5, use_mirroring=True)
    report = predictor.predict_folder(tmp_path / "imagesTs", tmp_path / "out")
    assert report.ok and len(report.completed) == len(ORIENTATIONS)
    summary = evaluate_folders(tmp_path / "labelsTs", tmp_path / "out", LABELS, ".nii.gz")
    for case in summary["per_case"]:
        # Flipping any one axis of these predictions would give a Dice below 0.5.
        assert case["metrics"]["organ"]["Dice"] >= least_dice, case["case_id"]
