"""``nnsam3d_predict --ray``: a local Ray cluster with two CPU workers predicts like the
single-process predictor, a killed worker loses no case, failures are named (random-weight
2-fold models). One cluster is shared by the module; Ray's start-up is the slow part."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from nnsam3d.commands.predict import main as predict_main
from nnsam3d.inference.predictor import Predictor
from nnsam3d.inference import ray_prediction
from nnsam3d.inference.postprocessing import PostprocessingRules
from nnsam3d.inference.ray_prediction import (
    CASES_IN_FLIGHT_PER_WORKER,
    LOCAL_CLUSTER_CONFIG,
    PredictionWorker,
    RayOptions,
    predict_folder_on_ray,
)
from nnsam3d.inference.shipped_model import pack_model
from nnsam3d.io.disk_space import DiskFullError, disk_full_message
from nnsam3d.model_sharing.export import export_model

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nnsam3d[ray]')")

FAST = {"use_mirroring": False, "step_size": 1.0}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPU slots with a small object store (the cases travel as file paths)."""
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **LOCAL_CLUSTER_CONFIG)
    yield
    ray.shutdown()


def reference_predictions(mri_model, inputs, output, model_dir=None):
    """The single-process predictor's outputs, with one thread as each Ray worker uses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor.from_model_folder(model_dir or mri_model.model_dir, device="cpu", **FAST)
        assert predictor.predict_folder(inputs, output).ok
    finally:
        torch.set_num_threads(threads)


def read_labels(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def assert_same_outputs(case_ids, output, reference):
    for case_id in case_ids:
        labels, affine = read_labels(output / f"{case_id}.nii.gz")
        expected, expected_affine = read_labels(reference / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(affine, expected_affine)
    assert not [p for p in output.iterdir() if p.name.startswith(".tmp")]


def test_two_workers_predict_a_folder_like_the_single_process_predictor(ray_cluster, mri_model, copy_cases, tmp_path,
                                                                         capsys):
    inputs = tmp_path / "in"
    case_ids = copy_cases(mri_model, inputs)
    reference_predictions(mri_model, inputs, tmp_path / "reference")
    assert len({read_labels(tmp_path / "reference" / f"{c}.nii.gz")[0].tobytes() for c in case_ids}) == len(case_ids)

    workers = []
    report = predict_folder_on_ray([mri_model.model_dir], inputs, tmp_path / "ray", device="cpu",
                                   ray_options=RayOptions(num_workers=2), predictor_options=FAST,
                                   on_workers_ready=workers.extend)
    assert report.ok and sorted(report.completed) == case_ids and not report.retried
    assert len({w["pid"] for w in workers}) == 2 and all(w["pid"] != os.getpid() for w in workers)
    assert report.network_seconds > 0
    assert_same_outputs(case_ids, tmp_path / "ray", tmp_path / "reference")

    # The command: --continue skips what is there, a broken case is named, the exit code says so.
    for case_id in case_ids[:2]:
        (tmp_path / "ray" / f"{case_id}.nii.gz").unlink()
    (inputs / f"{case_ids[1]}_0001.nii.gz").write_bytes(b"not an image")
    capsys.readouterr()
    code = predict_main(["-i", str(inputs), "-o", str(tmp_path / "ray"), "-d", mri_model.dataset, "--ray",
                         "--ray-workers", "2", "--continue", "--disable-tta", "--step-size", "1", "--no-progress",
                         "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 case(s) written" in err and "2 already there (--continue)" in err
    assert f"{case_ids[1]}: " in err and f"{case_ids[1]}_0001.nii.gz" in err
    assert_same_outputs([case_ids[0], *case_ids[2:]], tmp_path / "ray", tmp_path / "reference")


def test_a_killed_worker_loses_no_case(ray_cluster, mri_model, copy_cases, tmp_path):
    inputs = tmp_path / "in"
    case_ids = copy_cases(mri_model, inputs)
    for index in range(2):  # 8 cases: work left for the survivor when the first output appears
        for file in sorted((mri_model.raw_dir / "imagesTs").iterdir()):
            shutil.copy(file, inputs / file.name.replace("_", f"copy{index}_", 1))
    case_ids = sorted({f.name.rsplit("_", 1)[0] for f in inputs.iterdir()})
    reference_predictions(mri_model, inputs, tmp_path / "reference")
    output = tmp_path / "ray"
    killed = []

    def kill_when_the_first_output_appears(workers):
        if killed:  # the replacement worker: leave it alone
            return

        def kill():
            deadline = time.monotonic() + 120
            while not any(output.glob("*.nii.gz")) and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(workers[0]["pid"], signal.SIGKILL)

        killed.append(workers[0]["pid"])
        threading.Thread(target=kill, daemon=True).start()

    messages = []
    report = predict_folder_on_ray([mri_model.model_dir], inputs, output, device="cpu",
                                   ray_options=RayOptions(num_workers=2), predictor_options=FAST,
                                   on_workers_ready=kill_when_the_first_output_appears, log=messages.append)
    assert report.ok, report.failures
    assert report.retried, f"the killed worker had no case in flight: {messages}"
    assert any("a worker died" in m for m in messages)
    assert sorted(report.completed) == case_ids
    assert_same_outputs(case_ids, output, tmp_path / "reference")


def test_a_model_zip_reaches_workers_that_cannot_read_the_drivers_folder(ray_cluster, mri_model, copy_cases, tmp_path,
                                                                         monkeypatch, capsys):
    """``-m model.zip --ray``: the driver extracts the zip into its own temporary folder, which
    workers on other nodes cannot read; here that folder is renamed away as soon as the driver has
    read the checkpoints, so the workers can only have the model from Ray's object store."""
    model_dir = tmp_path / "results" / mri_model.dataset / mri_model.model_dir.name
    shutil.copytree(mri_model.model_dir, model_dir)
    PostprocessingRules(keep_largest_component=(1, 2)).save(model_dir / "postprocessing.json")  # travels too
    archive = tmp_path / "model.zip"
    export_model(model_dir, archive)
    inputs = tmp_path / "in"
    case_ids = copy_cases(mri_model, inputs, count=2)
    reference_predictions(mri_model, inputs, tmp_path / "reference", model_dir)
    hidden = []

    def pack_then_hide(model_dirs, *args):
        model = pack_model(model_dirs, *args)
        for folder in model_dirs:
            hidden.append(folder.rename(folder.with_name(f"{folder.name}-out-of-reach")))
        return model

    monkeypatch.setattr(ray_prediction, "pack_model", pack_then_hide)
    capsys.readouterr()
    code = predict_main(["-i", str(inputs), "-o", str(tmp_path / "ray"), "-m", str(archive), "--ray", "--ray-workers",
                         "2", "--disable-tta", "--step-size", "1", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert len(hidden) == 1 and hidden[0].parent.parent.name.startswith("nnsam3d-model-")  # the driver's extraction
    assert_same_outputs(case_ids, tmp_path / "ray", tmp_path / "reference")


def test_a_worker_whose_device_fails_is_retired_and_its_case_predicted_elsewhere(ray_cluster, mri_model, copy_cases,
                                                                                  tmp_path):
    inputs = tmp_path / "in"
    case_ids = copy_cases(mri_model, inputs)
    reference_predictions(mri_model, inputs, tmp_path / "reference")
    claim = tmp_path / "broken_worker_pid"

    class BrokenDeviceWorker(PredictionWorker):
        """The first worker to start has a broken device: its network stage raises CUDA's sticky
        error for every case, as a GPU after an illegal memory access does."""

        def __init__(self, *args):
            super().__init__(*args)
            try:
                descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)

            def broken_device(loaded):
                raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

            self.stages.predict = broken_device

    messages = []
    report = predict_folder_on_ray([mri_model.model_dir], inputs, tmp_path / "ray", device="cpu",
                                   ray_options=RayOptions(num_workers=2), predictor_options=FAST,
                                   log=messages.append, worker_class=BrokenDeviceWorker)
    assert report.ok, report.failures
    assert sorted(report.completed) == case_ids and report.retried
    assert any("device failed (AcceleratorError: CUDA error: an illegal memory access" in m
               and "retired it; starting a replacement" in m for m in messages), messages
    # Retired at its first failure: it never got more than the cases it already held.
    assert 1 <= sum("the device of its Ray worker failed" in m for m in messages) <= CASES_IN_FLIGHT_PER_WORKER
    broken_pid = int(claim.read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{broken_pid}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{broken_pid}"), "the retired worker's process still runs"
    assert_same_outputs(case_ids, tmp_path / "ray", tmp_path / "reference")


def test_a_full_output_disk_stops_the_ray_run(ray_cluster, mri_model, copy_cases, tmp_path):
    inputs = tmp_path / "in"
    copy_cases(mri_model, inputs)
    output = tmp_path / "ray"
    started = tmp_path / "started"
    started.mkdir()

    class FullDiskWorker(PredictionWorker):
        """Every write fails as on a full disk (atomic_path turns the writer's error into this)."""

        def __init__(self, *args):
            super().__init__(*args)
            predict = self.stages.predict

            def counted_predict(loaded):
                (started / f"{os.getpid()}-{time.monotonic_ns()}").touch()
                return predict(loaded)

            def full_disk(case, result):
                raise DiskFullError(disk_full_message(output, f"writing {case.case_id}.nii.gz", 4096))

            self.stages.predict, self.stages.save = counted_predict, full_disk

    with pytest.raises(DiskFullError, match=r"no space left on the disk .* Prediction stopped at syntheticmri_\d+, the first "
                                            r"case that could not be written: 0 case\(s\) were written, 4 not"):
        predict_folder_on_ray([mri_model.model_dir], inputs, output, device="cpu",
                              ray_options=RayOptions(num_workers=1), predictor_options=FAST,
                              worker_class=FullDiskWorker)
    assert len(list(started.iterdir())) < 4, "cases were still predicted after the disk was full"
    assert list(output.iterdir()) == []


def test_without_ray_the_message_names_the_extra(mri_model, copy_cases, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    inputs = tmp_path / "in"
    copy_cases(mri_model, inputs, count=1)
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "-d", mri_model.dataset, "--ray"]) == 1
    assert "pip install 'nnsam3d[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
