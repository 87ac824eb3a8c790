"""The lighter decoder: does dropping the full-resolution InstanceNorms cost Dice, and
what does it save per step? (issue 24, point 2: "a lighter normalisation there where Dice does not
suffer (show it on the demo)".)

Arms, both vit_tiny from scratch on the demo's 10 training cases (fold 'all', the 4 test cases
predicted without mirroring and evaluated):

* ``instance``: today's decoder (``nnSAM3DTrainer``): conv-InstanceNorm-LeakyReLU at every level;
* ``light``: ``nnSAM3DTrainer_noNormAtFullRes``: the two full-resolution convolutions (the stem's
  first and level 0's) with a bias and LeakyReLU, no norm.

Every run trains the same ``--iterations`` (equal steps: the Dice comparison does not depend on the
machine's load), per seed. What each arm's step costs: ``step_variants.py`` (``--cpu-demo`` on the
demo's plan, on a GPU the 24 GiB vit_b plan).

``--dataset brain``: the same on real brain MRI (``real_anatomy_dataset.py``: 4 templates, CSF / grey /
white matter, Colin27 held out), where a step costs 15 times the demo's.

Results: ``benchmarks/results/lighter_decoder_{demo,brain}.json`` (runs, mean Dice of each arm, the
difference).

    python benchmarks/lighter_decoder.py --workdir /tmp/lighter_decoder --seeds 0 1 --iterations 600
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from benchmark_support import environment, write_result
from pretraining_benefit import prepare_dataset, skip_final_validation, train_predict_evaluate

ARMS = {"instance": "nnSAM3DTrainer", "light": "nnSAM3DTrainer_noNormAtFullRes"}


def run_arm(workdir: Path, dataset: str, arm: str, seed: int, iterations: int, device: str) -> dict:
    result_file = workdir / "runs" / f"{dataset}_{arm}_seed{seed}_it{iterations}.json"
    if result_file.is_file():  # finished earlier
        return json.loads(result_file.read_text())
    run_dir = workdir / f"{dataset}_all_vit_tiny"
    name, raw_dir = prepare_dataset(run_dir, workdir, dataset, None, "vit_tiny")
    result = {"dataset": dataset, "arm": arm,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("./lighter_decoder_benchmark"))
    parser.add_argument("--dataset", default="demo", choices=("demo", "brain"),
                        help="the demo's synthetic CT (default), or real brain MRI (real_anatomy_dataset.py)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=600, help="training iterations of every run (default 600)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    skip_final_validation()
    workdir = args.workdir.resolve()
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            runs.append(run_arm(workdir, args.dataset, arm, seed, args.iterations, args.device))
            print(json.dumps(runs[-1]))
    every_run = [json.loads(path.read_text()) for path in sorted((workdir / "runs").glob("*.json"))]
    chosen = [run for run in every_run if run["iterations"] == args.iterations and run["dataset"] == args.dataset]
    write_result(f"lighter_decoder_{args.dataset}.json", {"machine": environment(), "command": vars(args) | {"workdir": str(workdir)},
                                            "runs": chosen, "summary": summarise(chosen)})


if __name__ == "__main__":
    main()
