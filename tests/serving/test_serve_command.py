"""nnsam3d_serve over a model folder of a real interactive network (random weights, its prompt
branch randomised so that clicks act), and nnsam3d_datastore_to_dataset on what it saved."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from nnsam3d.commands.datastore_to_dataset import main as datastore_to_dataset_main
from nnsam3d.commands.serve import build_app, build_parser, main as serve_main
from nnsam3d.io.image_io import read_volume_in_file_order
from nnsam3d.planners.integrity import check_dataset_integrity
from nnsam3d.serving.server_thread import running_server
from tests.interactive_stand_ins import write_random_interactive_model

@pytest.fixture(scope="module")
def served_model(tmp_path_factory, point_folders, make_plans):
    """(dataset name, raw folder, model folder, nnsam3d root) of a one-fold interactive model."""
    root = tmp_path_factory.mktemp("served_model")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        yield (*write_random_interactive_model(root, make_plans), root)


def test_binding_beyond_loopback_needs_a_token(served_model, capsys):
    _, _, model_dir, _ = served_model
    assert serve_main(["-m", str(model_dir), "--host", "0.0.0.0"]) == 1
    error = capsys.readouterr().err
    assert "nnsam3d_serve: error:" in error and "--token" in error and "0.0.0.0" in error
    assert serve_main(["-m", str(model_dir), "--step-size", "0", "--device", "cpu"]) == 1
    assert "--step-size 0.0: give a fraction of the patch in (0, 1]" in capsys.readouterr().err


def test_served_model_segments_takes_clicks_and_its_saved_labels_become_a_dataset(served_model, tmp_path, capsys):
    dataset, raw_dir, model_dir, root = served_model
    arguments = build_parser().parse_args(["-d", dataset, "--datastore", str(tmp_path / "store"), "--disable-tta",
                                           "--device", "cpu"])
    app = build_app(arguments, model_dir, None)
    image_files = sorted((raw_dir / "imagesTs").glob("*_0000.nii.gz"))
    with running_server(app) as url:
        info = requests.get(f"{url}/info/", timeout=30).json()
        assert info["models"]["nnsam3d_interactive"]["type"] == "deepedit"
        assert info["models"]["nnsam3d"]["labels"]["liver"] == 1
        for index, image_file in enumerate(image_files):
            with open(image_file, "rb") as handle:
                response = requests.put(f"{url}/datastore/image", params={"image": f"case_{index}"},
                                        files={"file": (image_file.name, handle)}, timeout=60)
            assert response.json() == {"image": f"case_{index}"}
        image, geometry = read_volume_in_file_order(image_files[0])
        automatic = _labels(requests.post(f"{url}/infer/nnsam3d", params={"image": "case_0", "output": "image"},
                                          timeout=120), tmp_path / "automatic.nii.gz", geometry)
        corner = [int(n) - 3 for n in image.shape]
        latencies = []
        for positive in ([corner], [corner, [corner[0] - 1, corner[1], corner[2]]]):
            params = {"label": "liver", "foreground": positive, "background": []}
            started = time.perf_counter()
            response = requests.post(f"{url}/infer/nnsam3d_interactive", params={"image": "case_0", "output": "image"},
                                     data={"params": json.dumps(params)}, timeout=120)
            latencies.append(time.perf_counter() - started)
            clicked = _labels(response, tmp_path / "clicked.nii.gz", geometry)
        changed = np.argwhere(clicked != automatic)
        assert len(changed) and (np.abs(changed - corner) <= np.array([40, 40, 10])).all()
        print(f"click latency over HTTP on {image.shape}: {', '.join(f'{s:.3f}' for s in latencies)} s")
        # The corrected label of case 0 and the automatic one of case 1 saved; the conversion turns
        # them into a dataset that passes the integrity check.
        _, geometry_1 = read_volume_in_file_order(image_files[1])
        _labels(requests.post(f"{url}/infer/nnsam3d", params={"image": "case_1", "output": "image"}, timeout=120),
                tmp_path / "case_1.nii.gz", geometry_1)
        for image_id, label_file in (("case_0", tmp_path / "clicked.nii.gz"), ("case_1", tmp_path / "case_1.nii.gz")):
            with open(label_file, "rb") as handle:
                saved = requests.put(f"{url}/datastore/label", params={"image": image_id},
                                     files={"label": (label_file.name, handle)}, timeout=60)
            assert saved.json() == {"image": image_id, "label": image_id}
    code = datastore_to_dataset_main(["--datastore", str(tmp_path / "store"), "-o", str(tmp_path / "Dataset600_Corrected")])
    assert code == 0, capsys.readouterr().err
    description, cases = check_dataset_integrity(tmp_path / "Dataset600_Corrected", num_processes=1)
    assert description.labels == json.loads((raw_dir / "dataset.json").read_text())["labels"]
    assert sorted(case.case_id for case in cases) == ["case_0", "case_1"]
    converted, converted_geometry = read_volume_in_file_order(tmp_path / "Dataset600_Corrected" / "labelsTr" / "case_0.nii.gz")
    assert np.array_equal(converted, clicked) and converted_geometry.shape == geometry.shape


def _labels(response, path, geometry):
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    labels, label_geometry = read_volume_in_file_order(path)
    assert label_geometry.shape == geometry.shape
    assert np.allclose(label_geometry.affine_array, geometry.affine_array, atol=1e-4)
    return labels


def test_datastore_to_dataset_names_what_is_missing(tmp_path, capsys):
    assert datastore_to_dataset_main(["--datastore", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    assert "no datastore.json" in capsys.readouterr().err


def test_a_slicer_label_is_mapped_by_segment_name(tmp_path, capsys):
    """Slicer exported the segments "lesion" then "liver" as values 1 and 2 (label_info in that
    order, idx counting a skipped background segment): the dataset holds the model's values."""
    import io

    import nibabel as nib

    from nnsam3d.serving.datastore import Datastore

    store = Datastore(tmp_path / "store")
    store.record_model_classes({"background": 0, "liver": 1, "lesion": 2}, {"0": "CT"})
    image = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32) * 100
    exported = np.zeros((6, 7, 8), dtype=np.uint8)
    exported[1:3, 1:3, 1:3] = 1   # lesion
    exported[4:6, 4:6, 4:6] = 2   # liver
    for name, array in (("image.nii.gz", image), ("label.nii.gz", exported)):
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.0, 2.0, 1.0])), tmp_path / name)
    store.add_image("case", "image.nii.gz", io.BytesIO((tmp_path / "image.nii.gz").read_bytes()))
    store.save_label("case", "label.nii.gz", io.BytesIO((tmp_path / "label.nii.gz").read_bytes()),
                     info={"params": {"label_info": [{"name": "lesion", "idx": 2}, {"name": "liver", "idx": 3}]}})
    assert datastore_to_dataset_main(["--datastore", str(tmp_path / "store"), "-o", str(tmp_path / "Dataset7_X")]) == 0
    converted, _ = read_volume_in_file_order(tmp_path / "Dataset7_X" / "labelsTr" / "case.nii.gz")
    assert (converted[1:3, 1:3, 1:3] == 2).all() and (converted[4:6, 4:6, 4:6] == 1).all()
    assert converted.sum() == 8 * 2 + 8 * 1


def test_kill_9_during_saves_loses_nothing_already_saved(served_model, tmp_path):
    """nnsam3d_serve killed (SIGKILL) while a client saves labels over and over: the index still
    reads, names the image and a label that is one of the saved ones, complete; nothing half-written
    is left once the datastore is opened again."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading

    import nibabel as nib

    from nnsam3d.serving.datastore import Datastore

    _, raw_dir, model_dir, _ = served_model
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = tmp_path / "store"
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "nnsam3d.commands.serve", "-m", str(model_dir), "--datastore",
                                str(store), "--port", str(port), "--device", "cpu", "--disable-tta"],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{url}/info/", timeout=5).raise_for_status()
                break
            except requests.RequestException:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        image_file = sorted((raw_dir / "imagesTs").glob("*_0000.nii.gz"))[0]
        with open(image_file, "rb") as handle:
            requests.put(f"{url}/datastore/image", params={"image": "case"}, files={"file": (image_file.name, handle)},
                         timeout=60).raise_for_status()
        image = nib.load(image_file)
        versions = []
        for value in (1, 2):
            labels = np.zeros(image.shape, dtype=np.uint8)
            labels[..., value] = value
            nib.save(nib.Nifti1Image(labels, image.affine), tmp_path / f"label{value}.nii.gz")
            versions.append(labels)
        saved, stop = [], threading.Event()

        def save_again_and_again():
            index = 0
            while not stop.is_set():
                try:
                    with open(tmp_path / f"label{index % 2 + 1}.nii.gz", "rb") as handle:
                        response = requests.put(f"{url}/datastore/label", params={"image": "case"},
                                                files={"label": ("case.nii.gz", handle)}, timeout=10)
                    if response.status_code == 200:
                        saved.append(index % 2)
                except requests.RequestException:
                    return
                index += 1

        saver = threading.Thread(target=save_again_and_again)
        saver.start()
        deadline = time.monotonic() + 30
        while len(saved) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        stop.set()
        saver.join(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        log.close()
    assert len(saved) >= 3
    datastore = Datastore(store)
    assert datastore.image_ids() == ["case"]
    label, _ = read_volume_in_file_order(datastore.label_path("case", "final"))
    assert any(np.array_equal(label, version) for version in versions)
    assert not [p for p in store.rglob("*") if p.name.startswith(".tmp-")]


def test_serve_takes_an_exported_model_zip(served_model, tmp_path, monkeypatch, capsys):
    """nnsam3d_serve -m model.zip: the zip is opened (no results folder needed) and served."""
    from nnsam3d.commands import serve as serve_command
    from nnsam3d.model_sharing.export import export_model

    _, raw_dir, model_dir, _ = served_model
    archive = tmp_path / "model.zip"
    export_model(model_dir, archive)
    answers = {}

    def serve_here(app, host, port):  # instead of blocking in uvicorn.run: one request, then return
        with running_server(app) as url:
            answers["info"] = requests.get(f"{url}/info/", timeout=30).json()

    monkeypatch.setattr("nnsam3d.serving.server_thread.serve_forever", serve_here)
    code = serve_command.main(["-m", str(archive), "--datastore", str(tmp_path / "store"), "--device", "cpu",
                               "--disable-tta", "--port", "8765"])
    error = capsys.readouterr().err
    assert code == 0, error
    assert "serving nnsam3d (segmentation), nnsam3d_interactive (deepedit) on http://127.0.0.1:8765" in error
    assert answers["info"]["models"]["nnsam3d_interactive"]["labels"]["liver"] == 1


def test_a_model_without_clicks_is_served_as_segmentation_only(start_server, phantom_file, make_plans):
    """A model trained without the prompt branch: only the automatic model is offered."""
    import torch

    from nnsam3d.inference.predictor import Predictor
    from nnsam3d.io.raw_dataset import DatasetDescription

    class Automatic(torch.nn.Module):
        deep_supervision = False

        def forward(self, x, prompts=None):
            logits = torch.zeros((x.shape[0], 2, *x.shape[2:]))
            logits[:, 1] = 10 * (x[:, 0] > 0.5).float() - 5
            return logits

    description = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "organ": 1}, num_training=1,
                                     file_ending=".nii.gz")
    predictor = Predictor([Automatic()], make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=2), description,
                          torch.device("cpu"), use_mirroring=False)
    url, _ = start_server(predictor=predictor)
    assert list(requests.get(f"{url}/info/", timeout=30).json()["models"]) == ["nnsam3d"]
    with open(phantom_file, "rb") as handle:
        requests.put(f"{url}/datastore/image", params={"image": "case"}, files={"file": ("case.nii.gz", handle)},
                     timeout=60).raise_for_status()
    response = requests.post(f"{url}/infer/nnsam3d", params={"image": "case", "output": "json"}, timeout=60)
    assert response.status_code == 200 and response.json()["label_names"] == {"background": 0, "organ": 1}
    refused = requests.post(f"{url}/infer/nnsam3d_interactive", params={"image": "case"}, timeout=60)
    assert refused.status_code == 404 and "this server has: nnsam3d" in refused.json()["detail"]
