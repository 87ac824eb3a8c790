"""Issue 21, point 5: a dataset of 2 training cases, as a new user with few labelled volumes has.

Fold 'all' needs no cross-validation splits (as in nnU-Net): plan and preprocess, ``nnsam3d_train
D all``, ``nnsam3d_predict`` (defaulting to fold 'all', the only model) and evaluation work end to
end; the commands that need cross-validation (a numbered fold, find_best_configuration) say what
to do instead. Training is one tiny epoch of a shrunk vit_tiny: what is checked is the hand-over
between the stages, not the quality.
"""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from nnsam3d.commands.evaluate import main as evaluate_main
from nnsam3d.commands.find_best_configuration import main as find_best_main
from nnsam3d.commands.predict import main as predict_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess, plans_path
from nnsam3d.trainers.splits import SPLITS_FILENAME

SHRINK = {"patch_size": (8, 32, 32), "adapter_dim": 16, "decoder_channels": (8, 16, 32, 64)}
TRAIN_QUICKLY = ["--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def two_cases(tmp_path_factory, point_folders):
    """(root, dataset name, raw folder) of a planned and preprocessed dataset of 2 training cases
    and 2 test cases, with the nnsam3d folders pointing into root while the module runs."""
    root = tmp_path_factory.mktemp("few_cases")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(dataset_id=993, name="TwoCases", num_training=2, num_test=2, shape=(10, 32, 32))
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        plans = plan_and_preprocess(spec.dataset_id, verify=True, backbone="vit_tiny", num_processes=1)
        plans.network = plans.network.replace(**SHRINK)
        plans.save(plans_path(spec.folder_name))
        yield root, spec.folder_name, raw_dir


def test_fold_all_trains_predicts_and_evaluates_without_splits(two_cases, tmp_path, capsys):
    root, dataset, raw_dir = two_cases
    assert train_main([dataset, "all", *TRAIN_QUICKLY]) == 0
    printed = capsys.readouterr()
    assert "cross-validation" not in printed.err
    # Fold 'all' reads and writes no splits: a later choice of folds stays the user's.
    assert not (root / "preprocessed" / dataset / SPLITS_FILENAME).exists()
    fold_dir = root / "results" / dataset / "nnSAM3DTrainer__nnsam3d_plans" / "fold_all"
    assert (fold_dir / "checkpoint_final.pth").is_file()
    validation = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert len(validation["per_case"]) == 2  # its own training cases, as nnU-Net validates fold 'all'

    output = tmp_path / "predictions"
    assert predict_main(["-i", str(raw_dir / "imagesTs"), "-o", str(output), "-d", dataset, "--no-progress"]) == 0
    assert "1 network(s)" in capsys.readouterr().err  # no -f: fold 'all', the only model
    for image_file in sorted((raw_dir / "imagesTs").iterdir()):
        case_id = image_file.name[: -len("_0000.nii.gz")]
        assert nib.load(str(output / f"{case_id}.nii.gz")).shape == nib.load(str(image_file)).shape
    assert evaluate_main(["-ref", str(raw_dir / "labelsTs"), "-pred", str(output), "-d", dataset]) == 0
    assert len(json.loads((output / "summary.json").read_text())["per_case"]) == 2

    # Choosing among cross-validated configurations needs cross-validation: say so, do not crash.
    assert find_best_main([dataset]) == 1
    err = capsys.readouterr().err
    assert "only fold 'all'" in err and "-f all" in err
    assert find_best_main([dataset, "-f", "all"]) == 1
    assert "its own training cases" in capsys.readouterr().err


def test_a_numbered_fold_with_too_few_cases_recommends_fold_all(two_cases, capsys):
    _, dataset, _ = two_cases
    assert train_main([dataset, "0", *TRAIN_QUICKLY]) == 1
    err = capsys.readouterr().err
    assert "5-fold cross-validation needs at least 5 training cases, found 2" in err
    assert f"nnsam3d_train {dataset} all" in err and SPLITS_FILENAME in err
