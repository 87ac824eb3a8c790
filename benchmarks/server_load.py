"""The annotation server (``nnsam3d_serve``) under load on loopback: click latency as a client sees it.

The model is ``interactive_latency.py``'s CPU case (vit_tiny at a demo-sized patch, random weights,
prompt branch randomised; speed does not depend on the weights), served from a thread on
127.0.0.1. Two parts:

1. one client: upload, automatic segmentation (the session start: the encoder over the image),
   then ``--clicks`` clicks in the same region, each a MONAI Label request carrying every point
   so far (the server runs the new one only): seconds per click, client side;
2. ``--clients`` concurrent clients, each with an image of its own shape, ``--requests`` clicks
   each: latency percentiles, and a check that no response is lost, failed (non-200) or mixed up
   (the answer's image id and grid are the client's own).

Writes ``benchmarks/results/server_load_cpu.json`` with the machine's load before and after.

    python benchmarks/server_load.py [--clicks 5] [--clients 3] [--requests 3] [--threads N] [--step-size 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
import torch

from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.image_io import read_volume_in_file_order
from nnsam3d.model.network import build_network
from nnsam3d.serving.app import ServerOptions, create_app
from nnsam3d.serving.datastore import Datastore
from nnsam3d.serving.server_thread import running_server

from benchmark_support import environment, load_average, write_result
from interactive_latency import CPU_CASE, _plans


def _predictor(step_size: float) -> Predictor:
    plans, description = _plans(CPU_CASE["config"], CPU_CASE["spacing_ijk"][::-1])
    torch.manual_seed(0)
    network = build_network(plans.network)
    with torch.no_grad():
        for parameter in network.prompt_encoder.parameters():
            parameter.normal_(0, 0.1)
    return Predictor([network], plans, description, torch.device("cpu"), step_size=step_size, use_mirroring=False)


def _image(folder: Path, name: str, shape) -> Path:
    rng = np.random.default_rng(len(name))
    image = rng.normal(0, 30, shape).astype(np.float32)
    centre = np.array(shape) // 2
    image[tuple(slice(c - 10, c + 10) for c in centre)] += 250
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([*CPU_CASE["spacing_ijk"], 1.0])), path)
    return path


def _upload(url: str, image_id: str, path: Path) -> None:
    with open(path, "rb") as handle:
        response = requests.put(f"{url}/datastore/image", params={"image": image_id}, files={"file": (path.name, handle)},
                                timeout=600)
    response.raise_for_status()


def _click(url: str, image_id: str, points: list, folder: Path) -> tuple[float, dict, tuple]:
    """One MONAI Label infer request with every point so far; (seconds, answer params, grid shape)."""
    started = time.perf_counter()
    response = requests.post(f"{url}/infer/nnsam3d_interactive", params={"image": image_id},
                             data={"params": json.dumps({"label": "class1", "foreground": points, "background": []})},
                             timeout=600)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return seconds, {"status": response.status_code, "detail": response.text}, ()
    # The multipart answer: the params part, then the file part (written as the clients do, then read).
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    parts = response.content.split(b"--" + boundary)
    params = json.loads(parts[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
    content = parts[2].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    result = folder / f"{image_id}-result.nii.gz"
    result.write_bytes(content)
    _, geometry = read_volume_in_file_order(result)
    return seconds, params, tuple(geometry.shape)


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1], "mean": statistics.mean(ordered), "count": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=5, help="clicks of the single client (default 5)")
    parser.add_argument("--clients", type=int, default=3, help="concurrent clients (default 3)")
    parser.add_argument("--requests", type=int, default=3, help="clicks per concurrent client (default 3)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window stride (nnsam3d_serve --step-size; default 0.5)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        options = ServerOptions(max_sessions=args.clients + 1, max_waiting=args.clients + 1)
        app = create_app(_predictor(args.step_size), Datastore(folder / "datastore"), options)
        with running_server(app) as url:
            shape = CPU_CASE["volume_ijk"]
            _upload(url, "single", _image(folder, "single", shape))
            started = time.perf_counter()
            requests.post(f"{url}/infer/nnsam3d", params={"image": "single", "output": "json"}, timeout=600).raise_for_status()
            session_start = time.perf_counter() - started
            centre = [n // 2 for n in shape]
            points, single = [], []
            for index in range(args.clicks):
                points.append([centre[0] + index % 2, centre[1], centre[2]])
                seconds, params, grid = _click(url, "single", points, folder)
                assert params.get("clicks_run") == 1 and grid == tuple(shape), params
                single.append(seconds)

            # Concurrent clients, each on an image of its own shape.
            shapes = {f"client{c}": (shape[0] - 2 * c, shape[1], shape[2]) for c in range(args.clients)}
            for image_id, client_shape in shapes.items():
                _upload(url, image_id, _image(folder, image_id, client_shape))
            latencies, problems = [], []

            def client(image_id: str) -> None:
                client_points = []
                for index in range(args.requests):
                    client_points.append([n // 2 + index % 2 for n in shapes[image_id]])
                    seconds, params, grid = _click(url, image_id, list(client_points), folder)
                    if params.get("image") != image_id or grid != shapes[image_id]:
                        problems.append({"client": image_id, "answer": params, "grid": grid})
                    else:
                        latencies.append(seconds)

            wall = time.perf_counter()
            threads = [threading.Thread(target=client, args=(image_id,)) for image_id in shapes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - wall
    expected = args.clients * args.requests
    result = {
        "machine": {**environment(), "loadavg_before": load_before, "loadavg_after": load_average()},
        "model": "vit_tiny, patch (24, 64, 64), random weights, no mirroring (interactive_latency.py's CPU case)",
        "volume_ijk": list(CPU_CASE["volume_ijk"]),
        "single_client": {"session_start_s": session_start, "click_s": _percentiles(single),
                          "note": "a click answered to the client over HTTP (request with every point so far, the "
                                  "new click run, the label map written and sent back)"},
        "concurrent": {"clients": args.clients, "requests_per_client": args.requests, "wall_s": wall,
                       "ok": len(latencies), "expected": expected, "problems": problems,
                       "click_s": _percentiles(latencies) if latencies else None},
    }
    result["step_size"] = args.step_size
    write_result("server_load_cpu.json" if args.step_size == 0.5 else f"server_load_cpu_step{args.step_size:g}.json", result)
    if problems or len(latencies) != expected:
        raise SystemExit(f"{len(problems)} failed or mixed-up responses, {expected - len(latencies)} missing")
    print(f"one client: {result['single_client']['click_s']['p50']:.2f} s per click (median); "
          f"{args.clients} clients: p50 {result['concurrent']['click_s']['p50']:.2f} s, "
          f"p90 {result['concurrent']['click_s']['p90']:.2f} s (load before: {load_before})")


if __name__ == "__main__":
    main()
