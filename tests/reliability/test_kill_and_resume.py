"""kill -9 at the worst moments, then the rerun: preprocessing continues with the finished cases,
training resumes from the newest checkpoint with training state whatever its name (also one
written by the time-based interval between the every-N-epochs checkpoints), prediction with
``--continue`` skips finished cases. Each killed run is a real process ended by SIGKILL at a
chosen point (a patched function sends it), so that no cleanup code runs."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from nnsam3d.commands.plan_and_preprocess import main as plan_main
from nnsam3d.commands.predict import main as predict_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.io.checkpoint_file import load_checkpoint

KILL = "import os, signal\ndef kill(): os.kill(os.getpid(), signal.SIGKILL)\n"


def run_killed(script: str) -> None:
    """Run ``script`` in a new Python process (same nnsam3d folders) and check it was killed."""
    result = subprocess.run([sys.executable, "-c", KILL + script], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -9, result.stderr[-3000:]


def test_kill_during_preprocessing_then_rerun(small_raw_dataset, nnsam3d_folders, capsys):
    # killed in the middle of writing the second case's image (part of the file written)
    run_killed(
        "import numpy as np\n"
        "original, calls = np.save, []\n"
        "def save(file, array, *a, **k):\n"
        "    calls.append(file)\n"
        "    if len(calls) == 3:\n"
        "        open(file, 'wb').write(b'partial'); kill()\n"
        "    return original(file, array, *a, **k)\n"
        "np.save = save\n"
        "from nnsam3d.commands.plan_and_preprocess import main\n"
        "main(['-d', '990', '--backbone', 'vit_tiny', '-np', '1'])\n"
    )
    store = nnsam3d_folders.preprocessed / small_raw_dataset.name / "nnsam3d_plans_3d"
    assert sorted(p.name for p in store.glob("syntheticct_*.json")) == ["syntheticct_000.json"]

    assert plan_main(["-d", "990", "--backbone", "vit_tiny", "-np", "1"]) == 0
    assert "1 of 3 cases already preprocessed" in capsys.readouterr().err
    assert len(list(store.glob("syntheticct_*.json"))) == 3
    for case in ("syntheticct_000", "syntheticct_001", "syntheticct_002"):
        assert np.load(store / f"{case}.npy").shape[1:] == np.load(store / f"{case}_seg.npy").shape[1:]


def _killed_training(dataset: str, kill_in_epoch: int, checkpoint_minutes: float, extra: list[str]) -> str:
    """A training process killed when epoch ``kill_in_epoch`` (1-based) starts."""
    return (
        "from nnsam3d.trainers.base_trainer import nnSAM3DTrainer\n"
        f"nnSAM3DTrainer.checkpoint_minutes = {checkpoint_minutes}\n"
        "original = nnSAM3DTrainer.run_epoch\n"
        "def run_epoch(self, epoch):\n"
        f"    if epoch + 1 == {kill_in_epoch}: kill()\n"
        "    return original(self, epoch)\n"
        "nnSAM3DTrainer.run_epoch = run_epoch\n"
        "from nnsam3d.commands.train import main\n"
        f"main({[dataset, '0', '--epochs', '4', '--iterations-per-epoch', '1', '--device', 'cpu', *extra]!r})\n"
    )


def test_kill_during_training_resumes_from_best_then_from_the_time_based_latest(tiny_dataset, nnsam3d_folders,
                                                                                 capsys):
    fold = nnsam3d_folders.results / tiny_dataset / "nnSAM3DTrainer__nnsam3d_plans" / "fold_0"
    # 1. killed in epoch 2, before any checkpoint_latest (every 5 epochs, or after 60 minutes):
    #    only checkpoint_best.pth (epoch 1, full training state) is on disk
    run_killed(_killed_training(tiny_dataset, kill_in_epoch=2, checkpoint_minutes=60, extra=[]))
    assert sorted(p.name for p in fold.glob("*.pth")) == ["checkpoint_best.pth"]

    # 2. --c resumes from it; with a zero-minute interval checkpoint_latest follows every epoch;
    #    killed in epoch 4, between the every-5-epochs checkpoints
    run_killed(_killed_training(tiny_dataset, kill_in_epoch=4, checkpoint_minutes=0, extra=["--c"]))
    log = (fold / "training_log.txt").read_text()
    assert "from checkpoint_best.pth (epoch 1)" in log
    assert load_checkpoint(fold / "checkpoint_latest.pth").epoch == 3

    # 3. --c again: from checkpoint_latest.pth, epoch 4 only, then validation
    assert train_main([tiny_dataset, "0", "--epochs", "4", "--iterations-per-epoch", "1", "--device", "cpu",
                       "--c"]) == 0
    assert "from checkpoint_latest.pth (epoch 3)" in capsys.readouterr().out
    log = (fold / "training_log.txt").read_text()
    assert [log.count(f"epoch {n}/4: train loss") for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert load_checkpoint(fold / "checkpoint_final.pth").epoch == 4
    assert (fold / "validation" / "summary.json").is_file()


def _segmentations(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.nii.gz") if not p.name.startswith("."))


def test_kill_during_prediction_then_continue(random_model, tmp_path, capsys):
    output = tmp_path / "predictions"
    arguments = ["-i", str(random_model.inputs), "-o", str(output), "-d", random_model.dataset, "--disable-tta",
                 "--no-progress", "--device", "cpu"]
    # killed while writing the second segmentation
    run_killed(
        "import nibabel\n"
        "original, calls = nibabel.save, []\n"
        "def save(image, file, *a, **k):\n"
        "    calls.append(file)\n"
        "    if len(calls) == 2:\n"
        "        open(file, 'wb').write(b'partial'); kill()\n"
        "    return original(image, file, *a, **k)\n"
        "nibabel.save = save\n"
        "from nnsam3d.commands.predict import main\n"
        f"main({arguments!r})\n"
    )
    # the killed write left only its hidden temporary file, never a half segmentation under the final name
    assert _segmentations(output) == [f"{random_model.case_ids[0]}.nii.gz"]

    assert predict_main([*arguments, "--continue"]) == 0
    assert "1 already there (--continue)" in capsys.readouterr().err
    assert _segmentations(output) == [f"{case}.nii.gz" for case in random_model.case_ids]
    for case in random_model.case_ids:
        assert nib.load(output / f"{case}.nii.gz").shape == nib.load(random_model.inputs / f"{case}_0000.nii.gz").shape

