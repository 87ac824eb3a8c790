"""``plan_and_preprocess`` and the ``nnsam3d_plan_and_preprocess`` command, with the real planner."""

from __future__ import annotations

import numpy as np
import pytest

from nnsam3d.commands.plan_and_preprocess import main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.schemas.fingerprint import DatasetFingerprint
from nnsam3d.schemas.plans import Plans
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.planners.plan_and_preprocess import fingerprint_path, plan_and_preprocess, plans_path


def test_plan_and_preprocess_writes_fingerprint_plans_and_cases(small_ct_dataset, nnsam3d_folders, capsys):
    plans = plan_and_preprocess(990, backbone="vit_tiny", num_processes=2)
    assert capsys.readouterr().out.strip() == plans.explanation and plans.explanation

    output = nnsam3d_folders.preprocessed / "Dataset990_SyntheticCT"
    assert fingerprint_path(990) == output / "dataset_fingerprint.json"
    assert plans_path(990) == output / "nnsam3d_plans.json"
    assert Plans.load(plans_path(990)) == plans
    assert DatasetFingerprint.load(fingerprint_path(990)).case_ids == [f"syntheticct_{i:03d}" for i in range(6)]
    assert (output / "dataset.json").is_file()

    store = PreprocessedCaseStore(output / plans.data_identifier)
    assert len(store.case_ids()) == 6
    for case_id in store.case_ids():
        properties = store.load_properties(case_id)
        assert properties.spacing_after_resampling == plans.target_spacing
        assert store.load_data(case_id).shape == (1, *properties.shape_after_resampling)


def test_rerun_reuses_the_fingerprint_unless_clean(small_ct_dataset):
    plan_and_preprocess(990, backbone="vit_tiny")
    path = fingerprint_path(990)
    content = DatasetFingerprint.load(path)
    content.intensity_statistics["0"].mean = 12345.0  # a reused fingerprint keeps this value
    content.save(path)

    plans = plan_and_preprocess(990, backbone="vit_tiny")
    assert plans.normalization[0].mean == 12345.0

    plans = plan_and_preprocess(990, backbone="vit_tiny", clean=True)
    assert plans.normalization[0].mean != 12345.0
    assert DatasetFingerprint.load(path).intensity_statistics["0"].mean == plans.normalization[0].mean


def test_fingerprint_is_extracted_again_when_cases_change(small_ct_dataset):
    plan_and_preprocess(990, backbone="vit_tiny")
    (small_ct_dataset / "imagesTr" / "syntheticct_004_0000.nii.gz").unlink()
    (small_ct_dataset / "labelsTr" / "syntheticct_004.nii.gz").unlink()
    plans = plan_and_preprocess("Dataset990_SyntheticCT", backbone="vit_tiny")
    assert "syntheticct_004" not in DatasetFingerprint.load(fingerprint_path(990)).case_ids
    data_folder = fingerprint_path(990).parent / plans.data_identifier
    assert "syntheticct_004" not in PreprocessedCaseStore(data_folder).case_ids()


def test_command_on_a_multichannel_mri_dataset(nnsam3d_folders):
    spec = SyntheticDatasetSpec(
        dataset_id=997, name="TwoChannelMRI", modality="MRI", num_channels=2, num_training=4, num_test=0,
        shape=(12, 40, 40),
    )
    generate_synthetic_dataset(nnsam3d_folders.raw, spec)
    assert main(["-d", "997", "--verify_dataset_integrity", "--backbone", "vit_tiny", "-np", "2"]) == 0
    plans = Plans.load(plans_path(997))
    assert [n.scheme for n in plans.normalization] == ["ZScoreNormalization", "ZScoreNormalization"]
    assert plans.network.in_channels == 2
    store = PreprocessedCaseStore(plans_path(997).parent / plans.data_identifier)
    data = store.load_data(store.case_ids()[0])
    assert data.shape[0] == 2 and np.isfinite(data).all()


def test_command_with_custom_plans_name(small_ct_dataset, nnsam3d_folders):
    assert main(["-d", "990", "--backbone", "vit_tiny", "-p", "my_plans", "--gpu-memory-gb", "8"]) == 0
    plans = Plans.load(plans_path(990, "my_plans"))
    assert plans.plans_name == "my_plans" and plans.data_identifier == "my_plans_3d"
    assert plans.memory.target_bytes == 8 * 2**30
    assert len(PreprocessedCaseStore(plans_path(990).parent / "my_plans_3d").case_ids()) == 6


@pytest.mark.parametrize(
    "break_dataset, argv, expected",
    [
        (None, ["-d", "123"], "No folder Dataset123_*"),
        (
            lambda d: write_json_atomic(d / "dataset.json", {"labels": {"background": 0}}),
            ["-d", "990"],
            "dataset.json: missing required key(s) channel_names, numTraining, file_ending",
        ),
        (
            lambda d: write_json_atomic(d / "dataset.json", {**read_json(d / "dataset.json"), "channel_names": ["CT"]}),
            ["-d", "990"],
            "dataset.json: channel_names must be a JSON object",
        ),
        (
            lambda d: (d / "labelsTr" / "syntheticct_002.nii.gz").unlink(),
            ["-d", "990"],
            "syntheticct_002.nii.gz: label file missing",
        ),
        (
            lambda d: (d / "imagesTr" / "syntheticct_001_0000.nii.gz").write_bytes(b"\x1f\x8b broken"),
            ["-d", "990"],
            "syntheticct_001_0000.nii.gz: cannot be read as NIfTI",
        ),
    ],
    ids=["unknown dataset", "bad dataset.json", "channel_names as a list", "missing label", "unreadable image"],
)
def test_user_errors_exit_with_a_message_and_write_nothing(
    small_ct_dataset, nnsam3d_folders, capsys, break_dataset, argv, expected
):
    if break_dataset is not None:
        break_dataset(small_ct_dataset)
    assert main([*argv, "--backbone", "vit_tiny"]) == 1
    stderr = capsys.readouterr().err
    assert expected in stderr and "Traceback" not in stderr
    assert list(nnsam3d_folders.preprocessed.iterdir()) == []


@pytest.mark.parametrize("argv", [["-d", "990", "-np", "0"], ["-d", "990", "--backbone", "vit_x"], []])
def test_bad_arguments_are_argparse_errors(small_ct_dataset, argv):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
