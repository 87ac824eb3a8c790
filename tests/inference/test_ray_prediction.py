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
from nnsam3d.inference.ray_prediction import LOCAL_CLUSTER_CONFIG, RayOptions, predict_folder_on_ray

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nnsam3d[ray]')")

FAST = {"use_mirroring": False, "step_size": 1.0}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPU slots with a small object store (the cases travel as file paths)."""
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **LOCAL_CLUSTER_CONFIG)
    yield
    ray.shutdown()


def reference_predictions(mri_model, inputs, output):
    """The single-process predictor's outputs, with one thread as each Ray worker uses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor.from_model_folder(mri_model.model_dir, device="cpu", **FAST)
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
