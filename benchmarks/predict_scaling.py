"""Prediction on Ray: cases per minute with 1 and 2 workers, and the Ray path's overhead.

The demo dataset (``nnsam3d.demo.synthetic_dataset`` defaults, its vit_tiny plan) is generated,
planned and preprocessed in a temporary folder with a model folder of random-weight folds
(speed does not depend on the weights); prediction uses the default settings (mirroring on all
axes, step size 0.5). Measured, in interleaved rounds (the shared machine's load drifts):

* ``plain_seconds``: ``Predictor.predict_folder`` in this process with one PyTorch thread, the
  single-machine predictor on one CPU slot;
* ``ray_1_worker_seconds`` / ``ray_2_workers_seconds``: ``predict_folder_on_ray`` on a local
  cluster with 1 and 2 workers of one CPU slot each; the cases' time (from all workers holding
  the model to the last output written) and, apart, ``..._startup_seconds`` (workers starting
  and loading the ensemble, paid once per run whatever the cohort's size);
* ``ray_overhead`` = ray_1_worker_seconds / plain_seconds (goal <= 1.1) and ``cases_per_minute``.

Results go to ``benchmarks/results/predict_scaling_cpu.json`` with the load average: the
2-core development machine is shared, so two workers compete with other jobs for the cores.

    python benchmarks/predict_scaling.py [--num-cases 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnsam3d.inference.ray_prediction import LOCAL_CLUSTER_CONFIG, RayOptions, import_ray, predict_folder_on_ray

from benchmark_support import environment, write_result
from predict_speed import demo_model


def ray_run(predictor, test_images: Path, output: Path, workers: int) -> tuple[float, float]:
    """(cases' seconds, start-up seconds) of one Ray run."""
    started = time.perf_counter()
    report = predict_folder_on_ray(
        [predictor.checkpoint_files[0].parent.parent], test_images, output, device="cpu",
        ray_options=RayOptions(num_workers=workers),
        predictor_options={"use_mirroring": predictor.use_mirroring, "step_size": predictor.step_size},
    )
    total = time.perf_counter() - started
    assert report.ok and not report.skipped, report.failures
    return report.wall_seconds, total - report.wall_seconds


def plain_run(predictor, test_images: Path, output: Path) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = predictor.predict_folder(test_images, output)
    finally:
        torch.set_num_threads(threads)
    assert report.ok, report.failures
    return report.wall_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cases", type=int, default=8, help="test cases in the folder (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds (default 2)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    arguments = parser.parse_args(argv)
    ray = import_ray()
    measured = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        predictor, test_images = demo_model(root, arguments.num_cases, num_folds=1)
        plain_run(predictor, test_images, root / "warmup")  # first-call costs
        ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
                 **LOCAL_CLUSTER_CONFIG)
        try:
            for index in range(arguments.rounds):
                loads = [os.getloadavg()[0]]
                plain = plain_run(predictor, test_images, root / f"plain_{index}")
                one, one_startup = ray_run(predictor, test_images, root / f"ray1_{index}", 1)
                two, two_startup = ray_run(predictor, test_images, root / f"ray2_{index}", 2)
                loads.append(os.getloadavg()[0])
                measured.append({
                    "plain_seconds": round(plain, 2), "ray_1_worker_seconds": round(one, 2),
                    "ray_2_workers_seconds": round(two, 2), "ray_1_worker_startup_seconds": round(one_startup, 2),
                    "ray_2_workers_startup_seconds": round(two_startup, 2),
                    "ray_overhead": round(one / plain, 3), "speedup_2_workers": round(one / two, 3),
                    "load_average_1min": [round(v, 2) for v in loads],
                })
                print(f"round {index + 1}/{arguments.rounds}: {measured[-1]}", file=sys.stderr)
        finally:
            ray.shutdown()

    def median(key: str) -> float:
        return round(float(np.median([m[key] for m in measured])), 3)

    cases = arguments.num_cases
    result = {
        "environment": environment(),
        "note": arguments.note,
        "ray_version": ray.__version__,
        "plan": {"backbone": predictor.plans.backbone, "patch_size": list(predictor.plans.patch_size)},
        "settings": {"folds": 1, "mirroring": predictor.use_mirroring, "step_size": predictor.step_size,
                     "cpu_slots_per_worker": 1},
        "cases": cases,
        "cases_per_minute": {
            "plain_1_thread": round(60 * cases / median("plain_seconds"), 1),
            "ray_1_worker": round(60 * cases / median("ray_1_worker_seconds"), 1),
            "ray_2_workers": round(60 * cases / median("ray_2_workers_seconds"), 1),
        },
        "ray_overhead": median("ray_overhead"),
        "speedup_2_workers": median("speedup_2_workers"),
        "startup_seconds": {"1_worker": median("ray_1_worker_startup_seconds"),
                            "2_workers": median("ray_2_workers_startup_seconds")},
        "rounds": measured,
    }
    write_result("predict_scaling_cpu.json", result)
    print(result, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
