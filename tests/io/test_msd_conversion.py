"""nnsam3d_convert_msd: an MSD task with 4D images becomes an nnU-Net v2 dataset the pipeline accepts."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from nnsam3d.commands.convert_msd import main as convert_main
from nnsam3d.planners.integrity import verify_dataset_integrity

AFFINE = np.array([[-0.6, 0.0, 0.0, 90.0], [0.0, -0.6, 0.0, 100.0], [0.0, 0.0, 3.6, -40.0], [0, 0, 0, 1.0]])


def msd_task(root, with_test: bool = True):
    """A prostate-like MSD task: two MRI channels (T2, ADC) in the 4th dimension of each image."""
    task = root / "Task05_Prostate"
    rng = np.random.default_rng(0)
    training = []
    for index in (1, 2):
        case = f"prostate_{index:02d}"
        image = rng.normal(300.0, 50.0, size=(12, 10, 6, 2)).astype(np.float32)
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:7, 3:6, 2:4] = 1
        label[7:9, 3:6, 2:4] = 2
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            (task / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, AFFINE), str(task / folder / f"{case}.nii.gz"))
        (task / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"macOS resource fork")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (task / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(rng.normal(size=(12, 10, 6, 2)).astype(np.float32), AFFINE),
             str(task / "imagesTs" / "prostate_03.nii.gz"))
    msd = {"name": "PROSTATE", "description": "Prostate transitional zone and peripheral zone segmentation",
           "licence": "CC-BY-SA 4.0", "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
           "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": 2, "numTest": 1,
           "training": training, "test": ["./imagesTs/prostate_03.nii.gz"] if with_test else []}
    (task / "dataset.json").write_text(json.dumps(msd))
    return task


def test_msd_task_converts_to_a_valid_nnunet_dataset(tmp_path, nnsam3d_folders, capsys):
    task = msd_task(tmp_path)
    assert convert_main(["-i", str(task), "-np", "1"]) == 0
    dataset = nnsam3d_folders.raw / "Dataset005_Prostate"
    assert str(dataset) in capsys.readouterr().out
    description = json.loads((dataset / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "T2", "1": "ADC"}
    assert description["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert description["numTraining"] == 2 and description["file_ending"] == ".nii.gz"
    assert description["licence"] == "CC-BY-SA 4.0" and "training" not in description
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        "prostate_01_0000.nii.gz", "prostate_01_0001.nii.gz", "prostate_02_0000.nii.gz", "prostate_02_0001.nii.gz"]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == ["prostate_03_0000.nii.gz", "prostate_03_0001.nii.gz"]

    source = nib.load(str(task / "imagesTr" / "prostate_02.nii.gz"))
    for channel in (0, 1):
        converted = nib.load(str(dataset / "imagesTr" / f"prostate_02_{channel:04d}.nii.gz"))
        assert converted.shape == (12, 10, 6)
        np.testing.assert_array_equal(converted.affine, source.affine)
        np.testing.assert_array_equal(converted.get_fdata(), source.get_fdata()[..., channel])
    assert (dataset / "labelsTr" / "prostate_01.nii.gz").read_bytes() == (task / "labelsTr" / "prostate_01.nii.gz").read_bytes()
    assert verify_dataset_integrity(dataset, num_processes=1) == []

    assert convert_main(["-i", str(task), "-overwrite_id", "505", "-np", "1"]) == 0
    assert (nnsam3d_folders.raw / "Dataset505_Prostate" / "dataset.json").is_file()


def test_broken_msd_tasks_are_named(tmp_path, nnsam3d_folders, capsys):
    task = msd_task(tmp_path, with_test=False)
    (task / "labelsTr" / "prostate_02.nii.gz").unlink()
    assert convert_main(["-i", str(task), "-np", "1"]) == 1
    assert "labelsTr/prostate_02.nii.gz: label listed in dataset.json not found" in capsys.readouterr().err
    assert not (nnsam3d_folders.raw / "Dataset005_Prostate" / "dataset.json").exists()
    (tmp_path / "NotATask").mkdir()
    assert convert_main(["-i", str(tmp_path / "NotATask")]) == 1
    assert "named TaskXX_Name" in capsys.readouterr().err
