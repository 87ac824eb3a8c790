"""CPU seconds per training batch of one augmentation worker (issue 24: "GPU idle time waiting for
data below 5%"), by stage: reading the patches from the memory-mapped cases, then every transform
of the training pipeline, on one core as a background worker runs; and from it the workers a GPU
step needs.

    python benchmarks/augmentation_speed.py                 # the 24 GiB vit_b plan of a typical CT
    python benchmarks/augmentation_speed.py --budget-gb 8   # another plan
    python benchmarks/augmentation_speed.py --dataset brain # 1 mm brain MRI: full 3D augmentation
    python benchmarks/augmentation_speed.py --dry-run       # vit_tiny, seconds (what the tests run)
    python benchmarks/augmentation_speed.py --reference     # also batchgenerators' own transforms

``--reference`` also times the pipeline with batchgenerators' own spatial and low-resolution
transforms in place of nnsam3d's faster equivalents, on whole blocks read by the loader (same
draws, same patches to 1e-5: the tests), the before/after of that change on one machine.

The cases are ``profile_step.py``'s synthetic ones at the plan's patch and spacing (what the
stream costs does not depend on the values). The random states are seeded, so two runs draw the
same patches and the same augmentations: before/after comparisons of a change measure only it.
BLAS runs on one thread, as in a worker (batchgenerators' workers limit it so).
With the step time of the same plan measured on a GPU (``gpu_checks.json``), the result says how
many workers supply a batch per step, and with how much to spare.

Results: ``benchmarks/results/augmentation_speed_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from nnsam3d.trainers.augmentation import read_size_for, settings_for, spatial_transform, training_transforms
from nnsam3d.trainers.batch_streams import MAX_DEFAULT_WORKERS
from nnsam3d.trainers.data_loading import PatchDataLoader, foreground_samples_per_batch
from nnsam3d.trainers.reference_transforms import reference_training_transforms

from benchmark_support import (
    RESULTS,
    environment,
    load_average,
    typical_abdominal_ct_plans,
    typical_brain_mri_plans,
    write_result,
)
from profile_step import synthetic_store


def measured_gpu_step(budget_gb: float) -> dict | None:
    """The GPU step of the same plan from ``gpu_checks.json``, where one was measured."""
    path = RESULTS / "gpu_checks.json"
    if not path.is_file():
        return None
    content = json.loads(path.read_text())
    for run in content.get("plans", []):
        if run.get("budget_gb") == budget_gb and run.get("seconds_per_step"):
            return {"seconds_per_step": run["seconds_per_step"], "gpu": content["environment"].get("gpu"),
                    "patch_size": run["patch_size"], "batch_size": run["batch_size"]}
    return None


def time_batches(plans, batches: int, reference: bool = False) -> dict:
    """Mean seconds per batch: reading, each transform (by class name, in pipeline order), total.
    nnsam3d's loader runs the spatial transform while reading (the time of its reads is "read
    patches", the rest "CroppedSpatialTransform"); ``reference``: whole blocks read, then
    batchgenerators' own spatial and low-resolution transforms."""
    settings = settings_for(plans.patch_size, plans.target_spacing, plans.anisotropic_axis)
    read_size = read_size_for(settings)
    if reference:
        pipeline, spatial = reference_training_transforms(settings), None
    else:
        pipeline, spatial = training_transforms(settings), spatial_transform(settings)
    with tempfile.TemporaryDirectory() as folder:
        store = synthetic_store(Path(folder), plans)
        loader = PatchDataLoader(store.folder, store.case_ids(), plans.batch_size, plans.patch_size,
                                 foreground_samples_per_batch(plans.batch_size, plans.foreground_oversampling),
                                 read_size, spatial=spatial)
        reading = [0.0]
        read_region = loader.read_region

        def timed_read_region(*args, **kwargs):
            started = time.perf_counter()
            region = read_region(*args, **kwargs)
            reading[0] += time.perf_counter() - started
            return region

        loader.read_region = timed_read_region
        loader.generate_train_batch()  # the first read pages the cases in
        # Seeded after it: nnsam3d's loader draws the spatial transform, the reference's pipeline
        # does, so only from here on do both make the same draws. Noise and blur draw from both.
        np.random.seed(0), random.seed(0)
        reading[0], loading = 0.0, 0.0
        seconds = {type(t).__name__: 0.0 for t in pipeline.transforms}
        for _ in range(batches):
            started = time.perf_counter()
            batch = loader.generate_train_batch()
            loading += time.perf_counter() - started
            for transform in pipeline.transforms:
                started = time.perf_counter()
                batch = transform(**batch)
                seconds[type(transform).__name__] += time.perf_counter() - started
    loader_stages = {"read patches": reading[0]}
    if spatial is not None:
        loader_stages[type(spatial).__name__] = loading - reading[0]
    seconds = {**loader_stages, **seconds}
    per_batch = {name: round(value / batches, 3) for name, value in seconds.items()}
    return {"settings": {"thin_axis": settings.thin_axis, "rotation_degrees": settings.rotation_degrees,
                         "read_size": list(read_size)},
            "seconds_per_batch_by_stage": per_batch, "seconds_per_batch": round(sum(seconds.values()) / batches, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-gb", type=float, default=24.0, help="GPU memory of the plan (default 24 GiB)")
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--dataset", choices=("ct", "brain"), default="ct",
                        help="typical abdominal CT (in-plane augmentation) or brain MRI (1 mm, full 3D)")
    parser.add_argument("--batches", type=int, default=None, help="batches timed (default 8, 2 dry)")
    parser.add_argument("--dry-run", action="store_true", help="vit_tiny plan of a small CT, seconds")
    parser.add_argument("--reference", action="store_true",
                        help="also time batchgenerators' own spatial and low-resolution transforms")
    parser.add_argument("--output", type=Path, default=None)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)  # as one background worker runs
    if arguments.dry_run:
        from gpu_checks import _dry_run_plans

        plans, _ = _dry_run_plans(0.2)
        description = "vit_tiny, dry run"
    elif arguments.dataset == "brain":
        plans, _ = typical_brain_mri_plans(gpu_memory_gb=arguments.budget_gb, backbone=arguments.backbone)
        description = f"{arguments.backbone}, {arguments.budget_gb:g} GiB plan of a typical brain MRI"
    else:
        plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=arguments.budget_gb, backbone=arguments.backbone)
        description = f"{arguments.backbone}, {arguments.budget_gb:g} GiB plan of a typical CT"
    batches = arguments.batches or (2 if arguments.dry_run else 8)
    result = {"environment": environment(), "loadavg_before": load_average(),
              "command": ["python", "benchmarks/augmentation_speed.py", *(argv if argv is not None else sys.argv[1:])],
              "plan": description, "patch_size": list(plans.patch_size), "batch_size": plans.batch_size,
              "batches": batches}
    with threadpool_limits(1):
        result.update(time_batches(plans, batches))
        if arguments.reference:
            result["reference"] = {"transforms": "batchgenerators' SpatialTransform and SimulateLowResolutionTransform",
                                   **time_batches(plans, batches, reference=True)}
            result["speedup_over_reference"] = round(result["reference"]["seconds_per_batch"]
                                                     / result["seconds_per_batch"], 2)
    result["loadavg_after"] = load_average()
    step = None if arguments.dry_run or arguments.dataset != "ct" else measured_gpu_step(arguments.budget_gb)
    if step and step["patch_size"] == list(plans.patch_size) and step["batch_size"] == plans.batch_size:
        needed = result["seconds_per_batch"] / step["seconds_per_step"]
        result["gpu_step"] = {**step, "workers_to_keep_up": math.ceil(needed),
                              "default_workers_on_16_cores": min(MAX_DEFAULT_WORKERS, 15),
                              "supply_over_demand_with_default": round(min(MAX_DEFAULT_WORKERS, 15) / needed, 2)}
    default_name = {"ct": "augmentation_speed_cpu.json", "brain": "augmentation_speed_brain_cpu.json"}[arguments.dataset]
    output = arguments.output or RESULTS / ("augmentation_speed_dry_run.json" if arguments.dry_run else default_name)
    write_result(output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
