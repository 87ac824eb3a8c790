"""The lighter decoder on the demo: does dropping the full-resolution InstanceNorms cost Dice, and
what does it save per step? (issue 24, point 2: "a lighter normalisation there where Dice does not
suffer (show it on the demo)".)

Arms, both vit_tiny from scratch on the demo's 10 training cases (fold 'all', the 4 test cases
predicted without mirroring and evaluated):

* ``instance``: today's decoder (``nnSAM3DTrainer``): conv-InstanceNorm-LeakyReLU at every level;
* ``light``: ``nnSAM3DTrainer_noNormAtFullRes``: the two full-resolution convolutions (the stem's
  first and level 0's) with a bias and LeakyReLU, no norm.

Every run trains the same ``--iterations`` (equal steps: the Dice comparison does not depend on the
machine's load), per seed. ``--step-seconds`` measures each arm's training step on the demo plan
(the trainer's step on a fixed batch, ``train_speed.model_step``), alternating the arms so that a
change in the machine's load hits both; with ``--device cuda`` it measures the planner's 24 GiB
vit_b plan for a typical CT instead (what ``gpu_session.sh`` runs).

Results: ``benchmarks/results/decoder_norm_demo.json`` (runs, mean Dice of each arm, the
difference) and ``decoder_norm_step_{cpu,cuda}.json``.

    python benchmarks/decoder_norm_demo.py --workdir /tmp/decoder_norm --seeds 0 1 --iterations 600
    python benchmarks/decoder_norm_demo.py --step-seconds 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import mean

import torch
from benchmark_support import environment, load_average, typical_abdominal_ct_plans, write_result
from pretraining_benefit import prepare_dataset, skip_final_validation, train_predict_evaluate

from nnsam3d.model.config import NetworkConfig

ARMS = {"instance": "nnSAM3DTrainer", "light": "nnSAM3DTrainer_noNormAtFullRes"}
DATASET = "demo"
ROUNDS = 6
"""Alternations of the two arms when timing steps."""


def run_arm(workdir: Path, arm: str, seed: int, iterations: int, device: str) -> dict:
    result_file = workdir / "runs" / f"{DATASET}_{arm}_seed{seed}_it{iterations}.json"
    if result_file.is_file():  # finished earlier
        return json.loads(result_file.read_text())
    run_dir = workdir / f"{DATASET}_all_vit_tiny"
    name, raw_dir = prepare_dataset(run_dir, workdir, DATASET, None, "vit_tiny")
    result = {"dataset": DATASET, "arm": arm,
              **train_predict_evaluate(run_dir, name, raw_dir, ARMS[arm], seed, device, 0.0, iterations, label=arm)}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def summarise(runs: list[dict]) -> dict:
    """Mean foreground Dice and per-class Dice of each arm, and light minus instance (per seed and mean)."""
    by_arm = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in ARMS}
    summary = {}
    for arm, chosen in by_arm.items():
        if chosen:
            summary[arm] = {"seeds": [r["seed"] for r in chosen],
                            "foreground_mean_dice": mean(r["foreground_mean_dice"] for r in chosen),
                            "dice": {c: mean(r["dice"][c] for r in chosen) for c in chosen[0]["dice"]}}
    paired = [(light["foreground_mean_dice"] - instance["foreground_mean_dice"])
              for light in by_arm["light"] for instance in by_arm["instance"] if light["seed"] == instance["seed"]]
    if paired:
        summary["light_minus_instance"] = {"per_seed": paired, "mean": mean(paired)}
    return summary


def step_configs(device: torch.device) -> tuple[NetworkConfig, int, str]:
    """The default trainer's network on the demo plan (CPU) or on the 24 GiB vit_b plan (GPU)."""
    if device.type == "cuda":
        plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=24.0, backbone="vit_b")
        return plans.network.replace(trainable="adapters", deep_supervision=True), plans.batch_size, "vit_b, 24 GiB plan"
    from train_speed import demo_plan

    with tempfile.TemporaryDirectory() as folder:
        plans, _ = demo_plan(Path(folder))
    return plans.network.replace(trainable="full", deep_supervision=True), plans.batch_size, "vit_tiny, demo plan"


def step_seconds(seconds: float, device: torch.device) -> dict:
    """Seconds per training step of each arm's network, the arms alternated ``ROUNDS`` times."""
    from train_speed import model_step

    config, batch_size, plan = step_configs(device)
    steps = {}
    for arm in ARMS:
        torch.manual_seed(0)
        arm_config = config.replace(norm_at_full_resolution=arm == "instance")
        steps[arm] = model_step(arm_config, batch_size, device)[0]
        steps[arm]()  # AdamW's state, cuDNN's choice of kernels
    timings = {arm: [] for arm in ARMS}
    load_before = load_average()
    for _ in range(ROUNDS):
        for arm, step in steps.items():
            count, started = 0, time.perf_counter()
            while count < 2 or time.perf_counter() - started < seconds / ROUNDS:
                step()
                count += 1
            timings[arm].append((time.perf_counter() - started) / count)
    result = {"plan": plan, "patch_size": list(config.patch_size), "batch_size": batch_size,
              "seconds_per_step": {arm: min(values) for arm, values in timings.items()},
              "every_round": timings, "loadavg_before": load_before, "loadavg_after": load_average()}
    result["light_saves"] = 1 - result["seconds_per_step"]["light"] / result["seconds_per_step"]["instance"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("./decoder_norm_benchmark"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=600, help="training iterations of every run (default 600)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="train nothing: time each arm's step for about this many seconds in all")
    args = parser.parse_args()
    if args.step_seconds:
        device = torch.device(args.device)
        result = {"machine": environment(), "command": vars(args) | {"workdir": str(args.workdir)},
                  **step_seconds(args.step_seconds, device)}
        write_result(f"decoder_norm_step_{device.type}.json", result)
        return
    skip_final_validation()
    workdir = args.workdir.resolve()
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            runs.append(run_arm(workdir, arm, seed, args.iterations, args.device))
            print(json.dumps(runs[-1]))
    every_run = [json.loads(path.read_text()) for path in sorted((workdir / "runs").glob("*.json"))]
    chosen = [run for run in every_run if run["iterations"] == args.iterations]
    write_result("decoder_norm_demo.json", {"machine": environment(), "command": vars(args) | {"workdir": str(workdir)},
                                            "runs": chosen, "summary": summarise(chosen)})


if __name__ == "__main__":
    main()
