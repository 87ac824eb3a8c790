"""A full disk is one message naming the folder and the space needed; nothing half-written is
left and the rerun continues. A real small tmpfs where the test may mount one, else writers
monkeypatched to fail as a full disk makes them fail (ENOSPC after a partial write)."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsam3d.commands.plan_and_preprocess import main as plan_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.io import disk_space
from nnsam3d.io.atomic import save_npy_atomic, torch_save_atomic
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.disk_space import DiskFullError
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer

PLAN = ["-d", "990", "--backbone", "vit_tiny", "-np", "1"]


def _leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".tmp-*")]


def _write_part_then_fail(file) -> None:
    """What a writer does when the disk fills up: part of the file, then ENOSPC."""
    Path(file).write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_preprocessing_names_the_folder_and_the_rerun_resumes(
    small_raw_dataset, nnsam3d_folders, monkeypatch, capsys
):
    calls = []
    original = np.save

    def save(file, array, *args, **kwargs):
        calls.append(file)
        if len(calls) >= 3:  # the first case's image and label fit, then the disk is full
            _write_part_then_fail(file)
        return original(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    assert plan_main(PLAN) == 1
    stderr = capsys.readouterr().err
    store = nnsam3d_folders.preprocessed / small_raw_dataset.name / "nnsam3d_plans_3d"
    assert "Traceback" not in stderr
    assert f"{store}: no space left on the disk (preprocessing the 2 remaining case(s) needs about" in stderr
    assert _leftovers(nnsam3d_folders.preprocessed) == []
    assert sorted(p.name for p in store.glob("syntheticct_*.json")) == ["syntheticct_000.json"]

    monkeypatch.setattr(np, "save", original)
    assert plan_main(PLAN) == 0
    assert "1 of 3 cases already preprocessed" in capsys.readouterr().err
    assert len(list(store.glob("syntheticct_*.json"))) == 3


def test_preprocessing_refuses_to_start_when_the_cases_cannot_fit(small_raw_dataset, nnsam3d_folders, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 1000)
    assert plan_main(PLAN) == 1
    stderr = capsys.readouterr().err
    assert "no space left on the disk (preprocessing 3 case(s) needs about" in stderr and "1000 B free" in stderr
    store = nnsam3d_folders.preprocessed / small_raw_dataset.name / "nnsam3d_plans_3d"
    assert list(store.glob("syntheticct_*")) == []


def test_full_disk_while_writing_a_checkpoint(tiny_dataset, nnsam3d_folders, monkeypatch, capsys):
    monkeypatch.setattr(nnSAM3DTrainer, "checkpoint_minutes", 0.0)  # checkpoint_latest after every epoch
    original = torch.save

    def save(obj, file, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:  # epoch 1's checkpoints fit, epoch 2's do not
            _write_part_then_fail(file)
        return original(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = [tiny_dataset, "0", "--epochs", "3", "--iterations-per-epoch", "1", "--device", "cpu"]
    assert train_main(argv) == 1
    stderr = capsys.readouterr().err
    fold = nnsam3d_folders.results / tiny_dataset / "nnSAM3DTrainer__nnsam3d_plans" / "fold_0"
    assert "Traceback" not in stderr
    assert f"{fold}: no space left on the disk (writing checkpoint_" in stderr and "needs about" in stderr
    assert _leftovers(fold) == []
    assert load_checkpoint(fold / "checkpoint_latest.pth").epoch == 1  # the previous one, intact

    monkeypatch.setattr(torch, "save", original)
    assert train_main([*argv, "--c"]) == 0
    assert "from checkpoint_latest.pth (epoch 1)" in capsys.readouterr().out
    assert load_checkpoint(fold / "checkpoint_final.pth").epoch == 3


@pytest.fixture
def one_mebibyte_tmpfs(tmp_path):
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched tests cover the rest")
    yield folder
    # lazy: a writer object kept alive by a traceback may still hold the file system
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_is_reported_by_every_writer(one_mebibyte_tmpfs):
    # numpy reports a short write as "N requested and M written" without an errno, torch as a
    # RuntimeError: both must become the same message.
    writers = {
        "image.npy": lambda path: save_npy_atomic(path, np.zeros((512, 1024), dtype=np.float32)),
        "checkpoint.pth": lambda path: torch_save_atomic({"weights": torch.zeros(512, 1024)}, path),
    }
    for name, write in writers.items():
        with pytest.raises(DiskFullError) as caught:
            write(one_mebibyte_tmpfs / name)
        message = str(caught.value)
        assert message.startswith(f"{one_mebibyte_tmpfs}: no space left on the disk (writing {name} needs about 2.0 MiB")
        assert list(one_mebibyte_tmpfs.iterdir()) == []


def test_full_disk_during_prediction_stops_at_the_first_failed_write(random_model, nnsam3d_folders, tmp_path,
                                                                      monkeypatch, capsys):
    import nibabel as nib

    from nnsam3d.commands.predict import main as predict_main
    from nnsam3d.inference.predictor import Predictor

    for image in (nnsam3d_folders.raw / random_model.dataset / "imagesTr").glob("*_0000.nii.gz"):
        if not (random_model.inputs / image.name).exists():
            shutil.copyfile(image, random_model.inputs / image.name)
    case_ids = sorted(p.name[: -len("_0000.nii.gz")] for p in random_model.inputs.iterdir())
    assert len(case_ids) == 6
    predicted, writes = [], []
    original_predict, original_save = Predictor.predict_scores, nib.save

    def predict(self, data):
        predicted.append(data.shape)
        return original_predict(self, data)

    def save(image, path, *args, **kwargs):
        writes.append(path)
        if len(writes) >= 2:  # the first case's label map fits, then the disk is full
            _write_part_then_fail(path)
        return original_save(image, path, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_scores", predict)
    monkeypatch.setattr(nib, "save", save)
    output = tmp_path / "predictions"
    argv = ["-i", str(random_model.inputs), "-o", str(output), "-d", random_model.dataset, "--disable-tta",
            "--step-size", "1", "--no-progress", "--device", "cpu"]
    assert predict_main(argv) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert f"{output}: no space left on the disk (writing {case_ids[1]}.nii.gz needs about" in stderr
    assert (f"Prediction stopped at {case_ids[1]}, the first case that could not be written: 1 case(s) were written, "
            f"5 not (run the same command with --continue") in stderr
    assert len(predicted) <= 3, "cases were still predicted after a write had failed for lack of space"
    assert sorted(p.name for p in output.iterdir()) == [f"{case_ids[0]}.nii.gz"]  # nothing half-written

    monkeypatch.setattr(nib, "save", original_save)
    assert predict_main([*argv, "--continue"]) == 0
    assert "5 case(s) written" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == [f"{c}.nii.gz" for c in case_ids]
