"""Prediction throughput: how close a folder of cases gets to the network's own time.

CPU (always): the demo dataset (``nnsam3d.demo.synthetic_dataset`` defaults, vit_tiny plan)
is generated, planned and preprocessed in a temporary folder, and a model folder of
random-weight folds is written (speed does not depend on the weights). Then, with the default
prediction settings (mirroring on all axes, step size 0.5):

* ``pure_network_seconds``: the sliding window over every test case already preprocessed and
  in memory, one case after the other, nothing else running (``Predictor.predict_probabilities``);
  ``forward_seconds`` is the part spent inside the networks;
* ``sequential_seconds``: the same cases file to file, one stage after the other
  (``Predictor.predict_case_files`` per case: read, preprocess, network, export);
* ``wall_seconds``: file to file with ``Predictor.predict_folder``, reading and preprocessing
  of the next case and export of the previous one in background threads;
* ``wall_over_pure_network`` (goal <= 1.2) and ``cases_per_minute``.

The three are measured in interleaved rounds (default 3) and the medians reported, each
ratio taken within its round, because the load of the shared machine drifts.

Results go to ``benchmarks/results/predict_speed_cpu.json`` with the machine's load average
(the 2-core development machine is shared, so figures are noisy).

CUDA (when a GPU is visible): seconds per 512 x 512 x 300 CT with vit_b, the planner's plan for
a typical abdominal CT dataset on a 24 GiB GPU and 14 classes, through ``Predictor.predict_volume``
(preprocessing, sliding window with mirroring, restoring to the input grid), random weights.
Results go to ``benchmarks/results/predict_speed_cuda.json``.

    python benchmarks/predict_speed.py [--num-cases 8] [--folds 1]
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

from nnsam3d import paths
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import DatasetDescription, find_cases_in_folder
from nnsam3d.model.network import build_network
from nnsam3d.preprocessing.preprocessor import preprocess_case_files

from benchmark_support import PLANS, TRAINER, environment, typical_abdominal_ct_plans, write_random_folds, write_result


def demo_model(root: Path, num_cases: int, num_folds: int):
    """Demo dataset with ``num_cases`` test cases, its vit_tiny plan, random folds; (predictor, test folder)."""
    from nnsam3d.demo.run_demo import use_work_folders
    from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    folders = use_work_folders(root)
    spec = SyntheticDatasetSpec(num_test=num_cases)
    raw_dir = generate_synthetic_dataset(folders[paths.RAW_VARIABLE], spec)
    plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
    description = DatasetDescription.from_file(raw_dir / "dataset.json")
    model_dir = paths.training_output_dir(spec.folder_name, TRAINER, PLANS)
    write_random_folds(plans, description, model_dir, num_folds)
    return Predictor.from_model_folder(model_dir, device="cpu"), raw_dir / "imagesTs"


def cpu_benchmark(num_cases: int, num_folds: int, rounds: int) -> dict:
    """The default settings (mirroring), and without mirroring, where the network is 8x faster and
    reading, preprocessing and export weigh more."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        predictor, test_images = demo_model(root, num_cases, num_folds)
        default = measure(predictor, test_images, root / "mirroring", rounds)
        predictor_without = Predictor(predictor.networks, predictor.plans, predictor.description, predictor.device,
                                      use_mirroring=False)
        without = measure(predictor_without, test_images, root / "no_mirroring", rounds)
    return {**default, "without_mirroring": without}


def measure(predictor: Predictor, test_images: Path, root: Path, rounds: int) -> dict:
    """Pure network, sequential and overlapped runs, interleaved over ``rounds`` so that a change
    of the shared machine's load hits them alike; ratios are taken within each round."""
    cases, _ = find_cases_in_folder(test_images, ".nii.gz", 1)
    predictor.predict_case_files(cases[0].image_files, root / "warmup.nii.gz")  # first-call costs
    preprocessed = [preprocess_case_files(c.image_files, predictor.plans, case_id=c.case_id) for c in cases]

    def pure_network() -> tuple[float, float]:
        forward_before = predictor.window_ensemble.network_seconds
        started = time.perf_counter()
        for case in preprocessed:
            predictor.predict_probabilities(case.data)
        return time.perf_counter() - started, predictor.window_ensemble.network_seconds - forward_before

    def sequential(index: int) -> float:
        started = time.perf_counter()
        for case in cases:
            predictor.predict_case_files(case.image_files, root / f"sequential_{index}" / f"{case.case_id}.nii.gz")
        return time.perf_counter() - started

    def overlapped(index: int) -> float:
        report = predictor.predict_folder(test_images, root / f"overlapped_{index}")
        assert report.ok and len(report.completed) == len(cases), report.failures
        return report.wall_seconds

    measured = []
    for index in range(rounds):
        loads = [os.getloadavg()[0]]
        pure, forward = pure_network()
        wall = overlapped(index)
        serial = sequential(index)
        loads.append(os.getloadavg()[0])
        measured.append({"pure_network_seconds": round(pure, 2), "forward_seconds": round(forward, 2),
                         "wall_seconds": round(wall, 2), "sequential_seconds": round(serial, 2),
                         "wall_over_pure_network": round(wall / pure, 3),
                         "sequential_over_pure_network": round(serial / pure, 3),
                         "load_average_1min": [round(v, 2) for v in loads]})
        print(f"mirroring {predictor.use_mirroring}, round {index + 1}/{rounds}: {measured[-1]}", file=sys.stderr)

    def median(key: str) -> float:
        return round(float(np.median([m[key] for m in measured])), 3)

    return {
        "plan": {"backbone": predictor.plans.backbone, "patch_size": list(predictor.plans.patch_size),
                 "target_spacing_mm": list(predictor.plans.target_spacing)},
        "settings": {"folds": len(predictor.networks), "mirroring": predictor.use_mirroring, "step_size": predictor.step_size,
                     "batch_size": predictor.batch_size},
        "cases": len(cases),
        "network_grid_shapes": [list(case.data.shape[1:]) for case in preprocessed],
        "median_over_rounds": {key: median(key) for key in (
            "pure_network_seconds", "forward_seconds", "wall_seconds", "sequential_seconds",
            "wall_over_pure_network", "sequential_over_pure_network")},
        "wall_over_pure_network": median("wall_over_pure_network"),
        "cases_per_minute": round(60 * len(cases) / median("wall_seconds"), 1),
        "rounds": measured,
    }




def synthetic_ct(shape_ijk=(512, 512, 300), seed: int = 0) -> np.ndarray:
    """A CT-like volume in file order: air outside a body ellipse, soft tissue with noise (HU)."""
    rng = np.random.default_rng(seed)
    i, j = np.ogrid[: shape_ijk[0], : shape_ijk[1]]
    body = ((i - shape_ijk[0] / 2) / (0.45 * shape_ijk[0])) ** 2 + ((j - shape_ijk[1] / 2) / (0.4 * shape_ijk[1])) ** 2 <= 1
    volume = np.where(body[..., None], 40.0, -1000.0).astype(np.float32) * np.ones(shape_ijk[2], np.float32)
    volume += rng.normal(0, 20, size=shape_ijk).astype(np.float32)
    return volume


def cuda_benchmark() -> dict:
    plans, description = typical_abdominal_ct_plans(slices=300)
    device = torch.device("cuda")
    network = build_network(plans.network.replace(deep_supervision=False))
    predictor = Predictor([network], plans, description, device)
    affine = np.diag([0.78, 0.78, 2.5, 1.0])
    volume = synthetic_ct()
    predictor.predict_volume(volume[:, :, :64], affine)  # warm-up (cuDNN, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    forward_before = predictor.window_ensemble.network_seconds
    started = time.perf_counter()
    labels = predictor.predict_volume(volume, affine)
    seconds = time.perf_counter() - started
    assert labels.shape == volume.shape
    return {
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "plan": {"backbone": plans.backbone, "patch_size": list(plans.patch_size),
                 "token_size": list(plans.network.token_size), "target_spacing_mm": list(plans.target_spacing)},
        "image_shape_ijk": list(volume.shape),
        "classes": description.num_classes,
        "settings": {"folds": 1, "mirroring": True, "step_size": 0.5, "batch_size": predictor.batch_size},
        "seconds_per_ct": round(seconds, 1),
        "forward_seconds": round(predictor.window_ensemble.network_seconds - forward_before, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cases", type=int, default=8, help="test cases in the folder (default 8)")
    parser.add_argument("--folds", type=int, default=1, help="folds ensembled (default 1, as the demo trains)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine busy')")
    arguments = parser.parse_args(argv)
    cpu = {"environment": environment(), "note": arguments.note, **cpu_benchmark(arguments.num_cases, arguments.folds, arguments.rounds)}
    write_result("predict_speed_cpu.json", cpu)
    if torch.cuda.is_available():
        cuda = {"environment": environment(), "note": arguments.note, **cuda_benchmark()}
        write_result("predict_speed_cuda.json", cuda)
    else:
        print("no CUDA GPU visible: the vit_b seconds-per-CT measurement was skipped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
