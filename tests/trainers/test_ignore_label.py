"""nnU-Net's ignore label (sparse annotation): not a class, no loss, no metric, never predicted.

A tiny sparsely annotated dataset (every second slice of each label file unannotated) goes
through planning, preprocessing, a short training run and validation.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.raw_dataset import DatasetDescription, DatasetFormatError
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.trainers.data_loading import foreground_centre
from nnsam3d.trainers.launch import train_fold
from nnsam3d.trainers.request import TrainingRequest

IGNORE = 4  # background 0, liver 1, kidney 2, lesion 3


def _description(labels: dict) -> DatasetDescription:
    return DatasetDescription.from_json(
        {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"})


def test_the_ignore_label_is_not_a_class_and_must_be_the_highest_value():
    description = _description({"background": 0, "organ": 1, "ignore": 2})
    assert description.ignore_label == 2 and description.num_classes == 2 and description.foreground_labels == [1]
    assert _description({"background": 0, "organ": 1}).ignore_label is None
    with pytest.raises(DatasetFormatError, match="ignore.*highest value"):
        _description({"background": 0, "ignore": 1, "organ": 2})


def test_foreground_patches_are_never_centred_on_the_ignore_label():
    locations = {1: np.array([[1, 1, 1]]), IGNORE: np.array([[5, 5, 5]])}
    rng = np.random.RandomState(0)
    assert {foreground_centre(locations, rng, ignore_label=IGNORE)[0] for _ in range(50)} == {1}
    assert foreground_centre({IGNORE: np.array([[5, 5, 5]])}, rng, ignore_label=IGNORE) is None


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, point_folders, tiny_network, mark_unannotated):
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp("sparse")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(num_training=5, num_test=0, shape=(16, 48, 48))
        mark_unannotated(generate_synthetic_dataset(root / "raw", spec), IGNORE)
        plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
        plans.network = plans.network.replace(**tiny_network)
        plans.save(root / "preprocessed" / spec.folder_name / f"{plans.plans_name}.json")
        # A dataset nnU-Net already split: its splits_final.json is adopted as is.
        cases = [f"syntheticct_{i:03d}" for i in range(5)]
        nnunet_folder = root / "nnUNet_preprocessed" / spec.folder_name
        nnunet_folder.mkdir(parents=True)
        (nnunet_folder / "splits_final.json").write_text(json.dumps(
            [{"train": cases[:2] + cases[3:], "val": [cases[2]]}, {"train": cases[1:], "val": cases[:1]}]))
        patch.setenv("nnUNet_preprocessed", str(root / "nnUNet_preprocessed"))
        request = TrainingRequest(dataset=spec.folder_name, fold="0", device="cpu", num_epochs=1,
                                  iterations_per_epoch=3, num_workers=0, seed=1)
        trainer = train_fold("nnSAM3DTrainer", request)
        yield trainer, root, plans


def test_nnunets_splits_file_is_adopted_as_is(sparse_run):
    trainer, root, _ = sparse_run
    nnunet = json.loads((root / "nnUNet_preprocessed" / trainer.dataset_name / "splits_final.json").read_text())
    assert json.loads((trainer.preprocessed_dir / "splits_final.json").read_text()) == nnunet
    assert list(trainer.fold.val) == ["syntheticct_002"]
    assert "cross-validation splits from" in (trainer.output_folder / "training_log.txt").read_text()


def test_planning_and_preprocessing_keep_the_ignore_label_out_of_the_classes(sparse_run):
    trainer, root, plans = sparse_run
    assert plans.network.num_classes == 4  # background + 3 organs: no output for "ignore"
    fingerprint = json.loads((trainer.preprocessed_dir / "dataset_fingerprint.json").read_text())
    assert sorted(fingerprint["class_statistics"]) == ["1", "2", "3"]
    store = PreprocessedCaseStore(trainer.preprocessed_dir / plans.data_identifier)
    segmentation = np.asarray(store.load_segmentation(trainer.case_ids[0]))
    assert IGNORE in segmentation and 1 in segmentation  # resampled with the classes, not mixed into them


def test_training_loss_ignores_unannotated_voxels_and_validation_never_predicts_them(sparse_run):
    trainer, root, plans = sparse_run
    assert all(np.isfinite(trainer.iteration_losses))
    # The trainer's own loss on a real patch: no gradient where nothing is annotated, and
    # anything predicted there leaves the loss unchanged.
    case = trainer.case_ids[0]
    store = PreprocessedCaseStore(trainer.preprocessed_dir / plans.data_identifier)
    box = (slice(None), *(slice(0, p) for p in plans.patch_size))
    data = torch.from_numpy(np.array(store.load_data(case)[box]))[None]
    target = torch.from_numpy(np.array(store.load_segmentation(case)[box]))[None]
    assert (target == IGNORE).any() and (target != IGNORE).any()
    trainer.network.train()
    outputs = [o.detach().requires_grad_() for o in trainer.network(data)]
    value = trainer.loss(outputs, target)
    value.backward()
    ignored = (target[:, 0] == IGNORE)[:, None].expand_as(outputs[0])
    assert outputs[0].grad[ignored].abs().max() == 0 and outputs[0].grad[~ignored].abs().max() > 0
    changed = [o.detach().clone() for o in outputs]
    changed[0][ignored] = 50.0
    assert trainer.loss(changed, target).item() == pytest.approx(value.item(), abs=1e-6)
    # Whole-case validation: predictions hold classes only; the summary scores classes only.
    validation = trainer.output_folder / "validation"
    for case_id in trainer.fold.val:
        predicted = np.asarray(nib.load(validation / f"{case_id}.nii.gz").dataobj)
        assert predicted.max() < IGNORE
    summary = json.loads((validation / "summary.json").read_text())
    assert summary["ignore_label"] == IGNORE and list(summary["labels"]) == ["liver", "kidney", "lesion"]


def test_integrity_accepts_sparse_annotation_but_not_a_case_with_nothing_annotated(tmp_path):
    from nnsam3d.planners.integrity import _label_value_problems

    description = _description({"background": 0, "organ": 1, "ignore": 2})
    assert _label_value_problems(tmp_path / "a.nii.gz", np.array([0.0, 2.0, 2.0]), description) == []
    problems = _label_value_problems(tmp_path / "b.nii.gz", np.array([2.0, 2.0]), description)
    assert len(problems) == 1 and "nothing is annotated" in problems[0].problem
