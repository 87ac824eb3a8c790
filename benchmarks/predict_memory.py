"""Peak memory of ``nnsam3d_predict`` on 512 x 512 x 300 CTs with 14 classes (requirement: < 16 GB).

Two CT-like cases of 512 x 512 x 300 voxels (0.78 x 0.78 x 2.5 mm, int16 ``.nii.gz``) are
predicted with the real command in a child process whose peak resident set size (``ru_maxrss``)
is recorded. The model is a small random-weight vit_tiny (memory of the score volumes does
not depend on the backbone; a large backbone adds its weights and activations, which the GPU
holds when there is one). The plans' target spacing equals the images' spacing, so the
network grid is the full 78.6 million voxels: the worst case for the class-score volume
(14 x 78.6 M float16 = 2.2 GB). Two cases, so that the peak includes the overlap of one
case's export with the next case's network pass. Mirroring is off and the step size 1 to
keep the run short: neither changes the size of any volume.

With ``--save-probabilities`` a second run also writes the float16 probabilities of the full
image (``CASE.npz``), which holds the K restored class volumes at once.

Results go to ``benchmarks/results/predict_memory_cpu.json``.

    python benchmarks/predict_memory.py [--with-probabilities]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from nnsam3d import paths
from nnsam3d.io.atomic import write_json_atomic
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.config import NetworkConfig
from nnsam3d.schemas.plans import ChannelNormalization, MemoryBudget, Plans

from benchmark_support import PLANS, TRAINER, environment, write_random_folds, write_result

DATASET = "Dataset901_MemoryCT"
SHAPE_IJK = (512, 512, 300)
SPACING_IJK = (0.78, 0.78, 2.5)
NUM_CLASSES = 14
LIMIT_BYTES = 16 * 10**9


def write_ct(path: Path, seed: int) -> None:
    """A body ellipse of soft tissue with noise in air, int16 Hounsfield units, RAS axes."""
    rng = np.random.default_rng(seed)
    i, j = np.ogrid[: SHAPE_IJK[0], : SHAPE_IJK[1]]
    body = ((i - 256) / 230.0) ** 2 + ((j - 256) / 200.0) ** 2 <= 1
    volume = np.empty(SHAPE_IJK, dtype=np.int16)
    for k in range(SHAPE_IJK[2]):
        volume[:, :, k] = np.where(body, 40, -1000) + rng.normal(0, 20, size=SHAPE_IJK[:2]).astype(np.int16)
    affine = np.diag([*SPACING_IJK, 1.0])
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def prepare(num_cases: int) -> Path:
    """Raw dataset with ``num_cases`` test CTs and a model folder with one random-weight fold,
    in the folders the nnSAM3D variables point at."""
    raw = paths.raw_root() / DATASET
    labels = {"background": 0, **{f"organ_{k}": k for k in range(1, NUM_CLASSES)}}
    write_json_atomic(raw / "dataset.json", {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0,
                                             "file_ending": ".nii.gz"})
    (raw / "imagesTs").mkdir(parents=True)
    for index in range(num_cases):
        write_ct(raw / "imagesTs" / f"ct_{index:03d}_0000.nii.gz", seed=index)
    description = DatasetDescription.from_file(raw / "dataset.json")
    plans = Plans(
        dataset_name=DATASET,
        target_spacing=(SPACING_IJK[2], SPACING_IJK[1], SPACING_IJK[0]),  # canonical (z, y, x): no resampling
        normalization=[ChannelNormalization(0, "CT", "CTNormalization", mean=80.0, std=60.0,
                                            lower_bound=-90.0, upper_bound=280.0)],
        median_shape=(300, 512, 512),
        network=NetworkConfig(backbone="vit_tiny", in_channels=1, num_classes=NUM_CLASSES, patch_size=(32, 128, 128),
                              token_size=(4, 16, 16), window_size=(2, 8, 8), decoder_channels=(8, 16, 32, 64),
                              trainable="full", deep_supervision=False),
        batch_size=2,
        memory=MemoryBudget(target_bytes=2**30, estimate_bytes=2**29, precision="fp32"),
    )
    write_random_folds(plans, description, paths.training_output_dir(DATASET, TRAINER, PLANS), num_folds=1)
    return raw / "imagesTs"


def peak_rss_of_predict(images: Path, output: Path, extra: list[str]) -> tuple[int, float]:
    """Run ``nnsam3d_predict`` in a child process (it inherits the nnSAM3D folder variables);
    (its peak RSS in bytes, wall seconds)."""
    command = [sys.executable, "-m", "nnsam3d.commands.predict", "-i", str(images), "-o", str(output), "-d", DATASET,
               "--device", "cpu", "--disable-tta", "--step-size", "1", "--no-progress", *extra]
    started = time.perf_counter()
    # A fresh child per run, so that ru_maxrss of the children is this run's peak.
    completed = subprocess.run([sys.executable, "-c", (
        "import resource, subprocess, sys; "
        f"code = subprocess.run({command!r}).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")],
        capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"nnsam3d_predict failed:\n{completed.stderr[-3000:]}")
    return int(completed.stdout.strip().splitlines()[-1]) * 1024, seconds  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cases", type=int, default=2)
    parser.add_argument("--with-probabilities", action="store_true", help="also measure --save-probabilities")
    parser.add_argument("--note", default="")
    arguments = parser.parse_args(argv)

    from nnsam3d.demo.run_demo import use_work_folders

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        use_work_folders(root)
        images = prepare(arguments.num_cases)
        runs = {"default": []}
        if arguments.with_probabilities:
            runs["save_probabilities"] = ["--save-probabilities"]
        measured = {}
        for name, extra in runs.items():
            peak, seconds = peak_rss_of_predict(images, root / f"out_{name}", extra)
            measured[name] = {"peak_rss_gb": round(peak / 1e9, 2), "within_16_gb": peak < LIMIT_BYTES,
                              "seconds": round(seconds, 1), "options": ["--disable-tta", "--step-size", "1", *extra]}
        written = nib.load(str(root / "out_default" / "ct_000.nii.gz"))
        assert written.shape == SHAPE_IJK
    result = {
        **environment(),  # spread, so that "measured_at" stays where earlier results have it
        "note": arguments.note,
        "machine_memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "cases": arguments.num_cases,
        "image_shape_ijk": list(SHAPE_IJK),
        "spacing_mm_ijk": list(SPACING_IJK),
        "classes": NUM_CLASSES,
        "network_grid_voxels": int(np.prod(SHAPE_IJK)),
        "score_volume_gb_float16": round(NUM_CLASSES * int(np.prod(SHAPE_IJK)) * 2 / 1e9, 2),
        "runs": measured,
    }
    write_result("predict_memory_cpu.json", result)
    return 0 if all(run["within_16_gb"] for run in measured.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
