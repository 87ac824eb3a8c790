"""What the server refuses, and how: ids that would leave the datastore, wrong files, oversized
bodies, bad params, unknown models and labels, points outside the image, missing tokens, a full
queue: each a 4xx (or 503) JSON answer naming the problem, never a 500, and nothing written."""

from __future__ import annotations

import json
import os
import threading

import pytest
import requests

from nnsam3d.serving.errors import BusyError
from nnsam3d.serving.live_sessions import LiveSessions
from nnsam3d.serving.request_gate import ModelQueue, token_matches


def _upload(url, path, image_id=None, name=None, headers=None):
    query = {} if image_id is None else {"image": image_id}
    with open(path, "rb") as handle:
        return requests.put(f"{url}/datastore/image", params=query, files={"file": (name or os.path.basename(path), handle)},
                            data={"params": "{}"}, headers=headers, timeout=60)


def _infer(url, model, image_id, params):
    return requests.post(f"{url}/infer/{model}", params={"image": image_id},
                         data={"params": params if isinstance(params, str) else json.dumps(params)}, timeout=60)


def _refused(response, status, *words):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in str(detail), detail
    return detail


@pytest.mark.parametrize("image_id, why", [
    ("../escape", "not a plain name"),
    ("/etc/passwd", "not a plain name"),
    ("a/b", "not a plain name"),
    ("..", "not a plain name"),
    (".hidden", "not a plain name"),
    ("nul\x00byte", "NUL byte"),
    ("x" * 300, "at most 128"),
])
def test_ids_that_would_leave_the_datastore_are_refused(start_server, phantom_file, tmp_path, image_id, why):
    url, datastore = start_server()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _refused(_upload(url, phantom_file, image_id), 400, why)
    _refused(requests.get(f"{url}/datastore/image", params={"image": image_id}, timeout=30), 400, why)
    _refused(requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=30), 400, why)
    _refused(_infer(url, "nnsam3d", image_id, {}), 400, why)
    with open(phantom_file, "rb") as handle:
        _refused(requests.put(f"{url}/datastore/label", params={"image": "case", "tag": image_id},
                              files={"label": ("l.nii.gz", handle)}, timeout=30), 400)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "escape").exists()


def test_symlinks_out_of_the_datastore_are_not_followed(start_server, phantom_file, tmp_path):
    url, datastore = start_server()
    assert _upload(url, phantom_file, "case").status_code == 200
    outside = tmp_path / "outside"
    outside.mkdir()
    # A label folder replaced by a symlink to elsewhere: saving through it is refused.
    (datastore.root / "labels" / "final").mkdir(exist_ok=True)
    os.rmdir(datastore.root / "labels" / "final")
    os.symlink(outside, datastore.root / "labels" / "final")
    with open(phantom_file, "rb") as handle:
        _refused(requests.put(f"{url}/datastore/label", params={"image": "case"},
                              files={"label": ("case.nii.gz", handle)}, timeout=30), 400, "outside the datastore")
    assert list(outside.iterdir()) == []
    # An image file replaced by a symlink to a file elsewhere: not served.
    secret = outside / "secret.nii.gz"
    secret.write_bytes(phantom_file.read_bytes())
    image = datastore.root / "images" / "case.nii.gz"
    image.unlink()
    os.symlink(secret, image)
    _refused(requests.get(f"{url}/datastore/image", params={"image": "case"}, timeout=30), 400, "outside the datastore")


def test_wrong_files_and_oversized_bodies_are_refused(start_server, phantom_file, tmp_path):
    url, datastore = start_server(max_upload_bytes=200_000)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    _refused(_upload(url, text, "case"), 415, "unsupported file type '.txt'")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"\x00" * 1000)
    _refused(_upload(url, fake, "case"), 415, "does not read as a .nii.gz image")
    big = tmp_path / "big.nii.gz"
    big.write_bytes(os.urandom(300_000))
    _refused(_upload(url, big, "case"), 413, "upload limit of 200000 bytes")
    # Without Content-Length (chunked), the limit holds as the body streams in.
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
    chunks = iter([head, *(b"\x01" * 50_000 for _ in range(6))])
    _refused(requests.put(f"{url}/datastore/image", params={"image": "case"}, data=chunks, timeout=30,
                          headers={"Content-Type": "multipart/form-data; boundary=x"}), 413, "upload limit")
    assert datastore.image_ids() == [] and list((datastore.root / "images").iterdir()) == []
    # A label on another grid, or with fractions, is refused; the image itself is fine.
    assert _upload(url, phantom_file, "case").status_code == 200
    import nibabel as nib
    import numpy as np
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), dtype=np.uint8), np.eye(4)), other)
    with open(other, "rb") as handle:
        _refused(requests.put(f"{url}/datastore/label", params={"image": "case"},
                              files={"label": ("case.nii.gz", handle)}, timeout=30), 400, "differs from the image's")
    assert not (datastore.root / "labels" / "final" / "case.nii.gz").exists()


@pytest.mark.parametrize("model, params, status, words", [
    ("unknown", {}, 404, ["unknown model 'unknown'", "nnsam3d_interactive"]),
    ("nnsam3d_interactive", "{not json", 400, ["params is not valid JSON"]),
    ("nnsam3d_interactive", "[1, 2]", 400, ["params must be a JSON object"]),
    ("nnsam3d_interactive", {"label": "spleen", "foreground": [[1, 1, 1]]}, 400, ["unknown label 'spleen'"]),
    ("nnsam3d_interactive", {"label": "liver", "foreground": [[1, 1]]}, 400, ["is not a voxel point"]),
    ("nnsam3d_interactive", {"label": "liver", "foreground": "here"}, 400, ["must be a list"]),
    ("nnsam3d_interactive", {"label": "liver", "foreground": [[400, 1, 1]]}, 400, ["lies outside the image of shape"]),
    ("nnsam3d_interactive", {"label": "liver", "foreground": [[-1, 1, 1]]}, 400, ["lies outside the image"]),
    ("nnsam3d_interactive", {"foreground": [[1, 1, 1]]}, 400, ["need a 'label'"]),
    ("nnsam3d_interactive", {"label": "background", "foreground": [[1, 1, 1]]}, 400, ["need a 'label'"]),
    ("nnsam3d", {"result_extension": ".png"}, 400, ["result_extension '.png'"]),
    ("nnsam3d", {"result_dtype": "complex"}, 400, ["result_dtype 'complex'"]),
])
def test_bad_infer_requests_get_a_4xx_naming_the_problem(start_server, phantom_file, model, params, status, words):
    url, _ = start_server()
    assert _upload(url, phantom_file, "case").status_code == 200
    _refused(_infer(url, model, "case", params), status, *words)
    _refused(_infer(url, "nnsam3d", "absent", {}), 404, "image 'absent' is not in the datastore")


def test_the_token_guards_every_route_but_auth(start_server, phantom_file):
    url, _ = start_server(token="t0ken")
    for response in (requests.get(f"{url}/info/", timeout=30),
                     requests.get(f"{url}/info/", headers={"Authorization": "Bearer wrong"}, timeout=30),
                     requests.get(f"{url}/datastore/", headers={"Authorization": "Basic t0ken"}, timeout=30),
                     _upload(url, phantom_file, "case")):
        _refused(response, 401, "token")
    assert requests.get(f"{url}/auth/", timeout=30).json()["enabled"] is True
    assert requests.get(f"{url}/info/", headers={"Authorization": "Bearer t0ken"}, timeout=30).status_code == 200
    assert token_matches("bearer t0ken", "t0ken") and not token_matches("Bearer t0ke", "t0ken")


def test_a_full_queue_answers_busy_at_once():
    queue = ModelQueue(max_waiting=1)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with queue.turn():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    admitted = threading.Semaphore(0)

    def wait_turn():
        with queue.turn():
            admitted.release()

    waiter = threading.Thread(target=wait_turn)
    waiter.start()
    import time
    deadline = time.monotonic() + 10
    while queue._admitted._value > 0 and time.monotonic() < deadline:  # until the waiter is admitted and waits
        time.sleep(0.01)
    with pytest.raises(BusyError, match="1 requests are already waiting"):
        with queue.turn():
            pass
    release.set()
    holder.join(10)
    waiter.join(10)
    assert admitted.acquire(timeout=1)
    with queue.turn():  # free again
        pass


def test_the_server_answers_503_with_retry_after_when_busy(start_server, phantom_file):
    url, _ = start_server(max_waiting=0)
    assert _upload(url, phantom_file, "case").status_code == 200
    results = []
    gate = threading.Barrier(4)

    def request():
        gate.wait()
        results.append(_infer(url, "nnsam3d_interactive", "case", {}))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200 and set(statuses) <= {200, 503}
    for response in results:
        if response.status_code == 503:
            assert response.headers["Retry-After"] and "busy" in response.json()["detail"]


def test_sessions_expire_when_idle_and_the_oldest_closes_first(oracle_predictor, phantom_file):
    now = [0.0]
    sessions = LiveSessions(oracle_predictor, interactive=True, max_sessions=2, idle_seconds=60, clock=lambda: now[0])
    first = sessions.get("a", 1, phantom_file)
    assert sessions.get("a", 1, phantom_file) is first          # kept: no new encoder pass
    sessions.get("b", 1, phantom_file)
    now[0] = 30.0
    sessions.get("a", 1, phantom_file)                          # a used last
    sessions.get("c", 1, phantom_file)                          # over the bound: b (least recent) closes
    assert "b" not in sessions and "a" in sessions and "c" in sessions
    assert sessions.get("a", 2, phantom_file) is not first      # a new upload of a: a new session
    now[0] = 200.0
    assert sorted(sessions.expire()) == ["a", "c"] and len(sessions) == 0
