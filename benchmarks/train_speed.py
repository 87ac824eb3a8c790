"""Training speed: the CPU demo configuration, and vit_b at a 24 GB plan on a GPU.

CPU (always): the demo dataset (``nnsam3d.demo.synthetic_dataset`` defaults) is generated,
planned for vit_tiny and preprocessed in a temporary folder; then, with that plan,

* ``model``: training iterations per second of the network alone (the trainer's loss and
  optimiser step on one fixed batch: forward, Dice + CE over the deep-supervision outputs,
  backward, clipping, AdamW);
* ``data_loader``: batches per second of the patch loader alone, and with the training
  augmentation, in this process (0 workers, what the CPU demo uses);
* ``training``: iterations per second of the two together, as the trainer runs them, with the
  augmentation in this process and in one background worker.

Results go to ``benchmarks/results/train_speed_cpu.json``.

CUDA (when a GPU is visible): vit_b with the configuration the planner chooses for a typical
abdominal CT dataset (512 x 512 slices at 0.78 mm, 2.5 mm apart, 14 classes) and a 24 GiB
budget; iterations per second with bf16 autocast and the peak of ``torch.cuda.max_memory_allocated``
against the plan's estimate. Weights are random (speed and memory do not depend on them),
with SAM's encoder frozen and adapters trainable as in the default trainer. Results go to
``benchmarks/results/train_speed_cuda.json``.

    python benchmarks/train_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network, count_parameters
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.trainers.augmentation import settings_for, training_transforms
from nnsam3d.trainers.batch_streams import training_loader
from nnsam3d.trainers.base_trainer import DEEP_SUPERVISION_OUTPUTS
from nnsam3d.trainers.data_loading import (
    PatchDataLoader,
    foreground_samples_per_batch,
    start_batch_stream,
    stop_batch_stream,
)
from nnsam3d.trainers.losses import DeepSupervisionLoss, DiceCrossEntropyLoss
from nnsam3d.trainers.optimization import Optimization, WarmupDecaySchedule, build_optimizer, precision_for

from benchmark_support import environment, typical_abdominal_ct_plans, write_result

WARMUP_STEPS = 3


def _rate(function, seconds: float, minimum: int = 5) -> dict:
    """Calls per second of ``function`` over at least ``seconds`` and ``minimum`` calls."""
    count, started = 0, time.perf_counter()
    while count < minimum or time.perf_counter() - started < seconds:
        function()
        count += 1
    elapsed = time.perf_counter() - started
    return {"per_second": count / elapsed, "calls": count, "seconds": elapsed}


def model_step(config: NetworkConfig, batch_size: int, device: torch.device):
    """Closures doing one training iteration of ``config`` as the trainer does: ``step_on(data,
    target)`` on a given batch, ``step()`` on a fixed random batch; with the network and optimisation."""
    network = build_network(config).to(device).train()
    optimizer = build_optimizer(network, 1e-4, 1e-2)
    optimization = Optimization(optimizer, WarmupDecaySchedule(optimizer, 1e-4, 10**6, 0.0), precision_for(device))
    loss_function = DeepSupervisionLoss(DiceCrossEntropyLoss(), DEEP_SUPERVISION_OUTPUTS)
    data = torch.randn(batch_size, config.in_channels, *config.patch_size, device=device)
    target = torch.randint(0, config.num_classes, (batch_size, 1, *config.patch_size), device=device, dtype=torch.int16)

    def step_on(batch_data: torch.Tensor, batch_target: torch.Tensor) -> None:
        with optimization.precision.autocast():
            loss = loss_function(network(batch_data.to(device)), batch_target.to(device))
        optimization.step(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return (lambda: step_on(data, target)), step_on, network, optimization


def demo_plan(root: Path):
    """Generate, plan (vit_tiny) and preprocess the demo dataset under ``root``; (plans, data folder)."""
    from nnsam3d import paths
    from nnsam3d.demo.run_demo import use_work_folders
    from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
    from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess

    folders = use_work_folders(root)
    spec = SyntheticDatasetSpec()
    generate_synthetic_dataset(folders[paths.RAW_VARIABLE], spec)
    plans = plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=1)
    return plans, folders[paths.PREPROCESSED_VARIABLE] / spec.folder_name / plans.data_identifier


def cpu_benchmark(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        plans, data_folder = demo_plan(Path(folder))
        config = plans.network.replace(trainable="full", deep_supervision=True)  # as the default trainer on vit_tiny
        device = torch.device("cpu")
        cases = PreprocessedCaseStore(data_folder).case_ids()
        settings = settings_for(plans.patch_size, plans.target_spacing, plans.anisotropic_axis)
        foreground = foreground_samples_per_batch(plans.batch_size, plans.foreground_oversampling)

        def augmenting_loader():
            return training_loader(data_folder, cases, plans.batch_size, settings, foreground)

        np.random.seed(0)
        plain = PatchDataLoader(data_folder, cases, plans.batch_size, plans.patch_size, foreground)
        augmented = start_batch_stream(augmenting_loader(), training_transforms(settings), 0, seed=0)
        step, step_on, network, _ = model_step(config, plans.batch_size, device)
        for _ in range(WARMUP_STEPS):
            step()
        model = _rate(step, seconds)
        plain_rate = _rate(lambda: next(plain), seconds)
        augmented_rate = _rate(lambda: next(augmented), seconds)

        def training_rate(stream) -> float:
            def iteration() -> None:
                batch = next(stream)
                step_on(batch["data"], batch["target"])

            return _rate(iteration, seconds)["per_second"]

        training = training_rate(augmented)
        with_worker = start_batch_stream(augmenting_loader(), training_transforms(settings), 1, seed=0)
        try:
            training_one_worker = training_rate(with_worker)
        finally:
            stop_batch_stream(with_worker)
        return {
            "plan": {"backbone": config.backbone, "patch_size": list(config.patch_size),
                     "token_size": list(config.token_size), "batch_size": plans.batch_size,
                     "trainable": config.trainable, "parameters": str(count_parameters(network))},
            "model_iterations_per_s": round(model["per_second"], 3),
            "data_loader_batches_per_s": round(plain_rate["per_second"], 2),
            "data_loader_with_augmentation_batches_per_s": round(augmented_rate["per_second"], 2),
            "training_iterations_per_s": round(training, 3),
            "training_iterations_per_s_one_worker": round(training_one_worker, 3),
            "augmentation": "in-plane" if settings.thin_axis is not None else "3D",
            "measurement_seconds_each": seconds,
        }




def cuda_benchmark(seconds: float) -> dict:
    plans, _ = typical_abdominal_ct_plans(slices=140, gpu_memory_gb=24)
    config = plans.network.replace(trainable="adapters", deep_supervision=True)
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    step, _, network, optimization = model_step(config, plans.batch_size, device)
    for _ in range(WARMUP_STEPS):
        step()
    torch.cuda.reset_peak_memory_stats()
    rate = _rate(step, seconds)
    peak = torch.cuda.max_memory_allocated()
    return {
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "precision": optimization.precision.name,
        "plan": {"backbone": config.backbone, "patch_size": list(config.patch_size),
                 "token_size": list(config.token_size), "batch_size": plans.batch_size,
                 "adapter_blocks": list(config.adapter_blocks), "adapter_dim": config.adapter_dim,
                 "activation_checkpointing": config.activation_checkpointing,
                 "checkpointed_blocks": config.checkpointed_blocks,
                 "parameters": str(count_parameters(network))},
        "iterations_per_s": round(rate["per_second"], 3),
        "peak_allocated_bytes": int(peak),
        "plan_estimate_bytes": int(plans.memory.estimate_bytes),
        "estimate_over_measured": round(plans.memory.estimate_bytes / peak, 3),
        "measurement_seconds": seconds,
    }



def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per quantity (default 20)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine busy')")
    arguments = parser.parse_args(argv)

    cpu = {"environment": environment(), "note": arguments.note, **cpu_benchmark(arguments.seconds)}
    write_result("train_speed_cpu.json", cpu)
    if torch.cuda.is_available():
        cuda = {"environment": environment(), "note": arguments.note, **cuda_benchmark(arguments.seconds)}
        write_result("train_speed_cuda.json", cuda)
    else:
        print("no CUDA GPU visible: the vit_b / 24 GB measurement was skipped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
