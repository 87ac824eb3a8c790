"""Does pre-training help? LiteMedSAM's pre-trained encoder against training from scratch, at equal
CPU training time, with 2, 5 and all training cases (issue 21, point 4).

Arms (each trains fold 'all' of a dataset cut to the first N training cases, then predicts the
dataset's test images without mirroring and evaluates them):

* ``a``: lite_medsam, LiteMedSAM's weights frozen, 3D adapters train (``nnSAM3DTrainer``);
* ``b``: lite_medsam from LiteMedSAM's weights, everything trains (``nnSAM3DTrainer_fullFinetune``);
* ``c``: lite_medsam from random weights, everything trains (``nnSAM3DTrainer_fromScratch``);
* ``d``: vit_tiny from scratch, today's CPU default (``nnSAM3DTrainer``);
* ``e``: as (a), adapters and decoder at 4x (a)'s learning rate (2e-3; ``nnSAM3DTrainer_adaptersLr2e3``
  below): the frozen features separate the classes linearly (``frozen_feature_probe.py``), so is
  (a) slow because its new parts learn slowly?
* ``f``: as (d), at 2e-3 (``nnSAM3DTrainer_lr2e3`` below): (e)'s control.

Every run trains for ``--minutes`` of wall time (the trainer's time budget, checked after each
epoch of 10 iterations; the learning-rate decay follows the budget), so a busy machine gives every arm fewer steps: run one at a time on a quiet machine and
read the load averages recorded beside each run. ``--iterations N`` instead trains every arm for
the same N iterations (the schedule's decay over N): the per-step comparison, which separates
what pre-training gives from what a CPU step costs, and which the machine's load does not change
(its files end in ``_itN``). Each run's result is its own JSON file under
``--workdir`` (reruns skip finished runs), copied to ``benchmarks/results/pretraining_runs/``; the
table of the runs asked for is written to ``benchmarks/results/pretraining_benefit.json``.

Datasets: ``demo`` (the embedded synthetic CT, 10 training and 4 test cases) and ``brain``
(``real_anatomy_dataset.py``: real brain templates, CSF / grey / white matter; needs its packages).

    python benchmarks/pretraining_benefit.py --workdir /tmp/pretraining --datasets demo --cases 2 all \\
        --arms a d --seeds 0 1 --minutes 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from benchmark_support import environment, load_average, write_result

from nnsam3d import paths
from nnsam3d.demo.run_demo import use_work_folders
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.evaluation.evaluate_folder import evaluate_folders
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.launch import train_fold
from nnsam3d.trainers.registry import get_trainer_class
from nnsam3d.trainers.request import TrainingRequest

class nnSAM3DTrainer_adaptersLr2e3(nnSAM3DTrainer):
    """Arm (e): LiteMedSAM frozen, adapters and decoder at 2e-3 (the default with SAM weights: 5e-4)."""

    lr_with_sam = 2e-3


class nnSAM3DTrainer_lr2e3(nnSAM3DTrainer):
    """Arm (f): vit_tiny from scratch at 2e-3 (its default: 1e-3), (e)'s learning rate: is (e)'s
    gain the pre-trained features, or a rate that any network would profit from in 10 minutes?"""

    lr_from_scratch = 2e-3


ARMS = {
    "a": ("lite_medsam", "nnSAM3DTrainer"),
    "b": ("lite_medsam", "nnSAM3DTrainer_fullFinetune"),
    "c": ("lite_medsam", "nnSAM3DTrainer_fromScratch"),
    "d": ("vit_tiny", "nnSAM3DTrainer"),
    "e": ("lite_medsam", "pretraining_benefit:nnSAM3DTrainer_adaptersLr2e3"),
    "f": ("vit_tiny", "pretraining_benefit:nnSAM3DTrainer_lr2e3"),
}
FOLD = "all"
ITERATIONS_PER_EPOCH = 10
"""Short epochs: the time budget is checked after each, and a lite_medsam epoch takes minutes on a CPU."""


def skip_final_validation() -> None:
    """Fold 'all' validates on its own training cases with mirroring, minutes per case for
    lite_medsam on a CPU and no information here: the held-out test cases are evaluated instead."""
    nnSAM3DTrainer.validate = lambda self: None


def source_dataset(name: str, raw_root: Path) -> Path:
    """The full raw dataset folder of ``name`` (built if missing)."""
    if name == "demo":
        spec = SyntheticDatasetSpec()
        folder = raw_root / spec.folder_name
        if not (folder / "dataset.json").is_file():
            generate_synthetic_dataset(raw_root, spec)
        return folder
    if name == "brain":
        from real_anatomy_dataset import build_dataset

        return build_dataset(raw_root)
    raise ValueError(f"unknown dataset '{name}' (demo or brain)")


def subset_dataset(source: Path, raw_root: Path, dataset_id: int, cases: int | None) -> tuple[str, Path]:
    """A copy of ``source`` with its first ``cases`` training cases (all for None) and every test
    case, as dataset ``dataset_id`` (its own plans and preprocessed data)."""
    description = json.loads((source / "dataset.json").read_text())
    labels = sorted((source / "labelsTr").iterdir())
    chosen = labels if cases is None else labels[:cases]
    name = f"Dataset{dataset_id:03d}_{source.name.split('_', 1)[1]}{len(chosen)}"
    target = raw_root / name
    if not (target / "dataset.json").is_file():
        ending = description["file_ending"]
        for folder in ("imagesTr", "labelsTr"):
            (target / folder).mkdir(parents=True, exist_ok=True)
        for label in chosen:
            case = label.name[: -len(ending)]
            shutil.copy(label, target / "labelsTr" / label.name)
            for image in sorted((source / "imagesTr").glob(f"{case}_*{ending}")):
                shutil.copy(image, target / "imagesTr" / image.name)
        for folder in ("imagesTs", "labelsTs"):
            shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
        (target / "dataset.json").write_text(json.dumps({**description, "numTraining": len(chosen)}, indent=1))
    return name, target


def run_one(workdir: Path, dataset: str, cases: int | None, arm: str, seed: int, minutes: float, device: str,
            iterations: int | None = None) -> dict:
    budget = f"_it{iterations}" if iterations else ""
    result_file = workdir / "runs" / f"{dataset}_{cases or 'all'}_{arm}_seed{seed}{budget}.json"
    if result_file.is_file():  # finished earlier; still kept with the results
        result = json.loads(result_file.read_text())
        write_result(f"pretraining_runs/{result_file.name}", result)
        return result
    backbone, trainer = ARMS[arm]
    run_dir = workdir / f"{dataset}_{cases or 'all'}_{backbone}"
    name, raw_dir = prepare_dataset(run_dir, workdir, dataset, cases, backbone)
    result = {"dataset": dataset, "arm": arm, "backbone": backbone,
              **train_predict_evaluate(run_dir, name, raw_dir, trainer, seed, device, minutes, iterations, label=arm)}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    write_result(f"pretraining_runs/{result_file.name}", result)  # every run's file is kept with the results
    return result


def prepare_dataset(run_dir: Path, workdir: Path, dataset: str, cases: int | None, backbone: str) -> tuple[str, Path]:
    """``dataset`` cut to ``cases`` training cases in ``run_dir``'s nnsam3d folders (which become the
    process's folders), planned and preprocessed for ``backbone``: (dataset name, raw folder)."""
    folders = use_work_folders(run_dir)
    source = source_dataset(dataset, workdir / "sources")
    dataset_id = 600 + (cases or 99)
    name, raw_dir = subset_dataset(source, folders[paths.RAW_VARIABLE], dataset_id, cases)
    if not (paths.preprocessed_dataset_dir(name) / f"{DEFAULT_PLANS_NAME}.json").is_file():
        plan_and_preprocess(dataset_id, verify=True, backbone=backbone, num_processes=2)
    return name, raw_dir


def train_predict_evaluate(run_dir: Path, name: str, raw_dir: Path, trainer: str, seed: int, device: str,
                           minutes: float, iterations: int | None, label: str) -> dict:
    """Train fold 'all' of dataset ``name`` with ``trainer`` for ``minutes`` of wall time (or
    ``iterations``), predict its test images without mirroring into ``run_dir/predictions/LABEL_seedS``
    and evaluate them: what was trained, how long, and the Dice of each class."""
    model_dir = paths.training_output_dir(name, get_trainer_class(trainer).__name__, DEFAULT_PLANS_NAME)
    shutil.rmtree(model_dir / f"fold_{FOLD}", ignore_errors=True)
    load_before = load_average()
    epochs = -(-iterations // ITERATIONS_PER_EPOCH) if iterations else 1000
    train_fold(trainer, TrainingRequest(dataset=name, fold=FOLD, num_epochs=epochs, iterations_per_epoch=ITERATIONS_PER_EPOCH,
                                        device=device, seed=seed, time_budget_minutes=None if iterations else minutes))
    history = load_checkpoint(model_dir / f"fold_{FOLD}" / "checkpoint_final.pth").training_state["log"]["history"]
    plans = Plans.load(paths.preprocessed_dataset_dir(name) / f"{DEFAULT_PLANS_NAME}.json")
    predictor = Predictor.from_model_folder(model_dir, folds=[FOLD], device=device, use_mirroring=False)
    predictions = run_dir / "predictions" / f"{label}_seed{seed}"
    shutil.rmtree(predictions, ignore_errors=True)
    started = time.perf_counter()
    predictor.predict_folder(raw_dir / "imagesTs", predictions)
    description = DatasetDescription.from_file(raw_dir / "dataset.json")
    summary = evaluate_folders(raw_dir / "labelsTs", predictions, description.labels, description.file_ending)
    return {
        "training_cases": len(list((raw_dir / "labelsTr").iterdir())),
        "trainer": trainer, "seed": seed, "minutes": None if iterations else minutes,
        "budget": "iterations" if iterations else "minutes",
        "patch_size": list(plans.patch_size), "batch_size": plans.batch_size,
        "tflop_per_step": plans.compute.flops_per_step / 1e12,
        "epochs": len(history), "iterations": ITERATIONS_PER_EPOCH * len(history),
        "training_seconds": sum(epoch["seconds"] for epoch in history),
        "prediction_seconds": time.perf_counter() - started,
        "dice": {cls: summary["mean"][cls]["Dice"] for cls in summary["mean"] if not cls.isdigit()},
        "foreground_mean_dice": summary["foreground_mean"]["Dice"],
        "loadavg_before": load_before, "loadavg_after": load_average(),
    }


SET_ASIDE = ("_memoryplan", "_shared")
"""Run files kept but not tabled: on the plans of before the CPU compute target (``_memoryplan``),
or trained while other processes shared the cores (``_shared``: fewer iterations in 10 minutes)."""
ARM_LABELS = {
    "a": "lite_medsam, adapters, 5e-4", "b": "lite_medsam fine-tuned whole, 5e-5",
    "c": "lite_medsam from random weights, 1e-3", "d": "vit_tiny from scratch, 1e-3",
    "e": "lite_medsam, adapters, 2e-3", "f": "vit_tiny from scratch, 2e-3",
}


def markdown_table(runs: list[dict], dataset: str) -> str:
    """The README's table of the equal-time runs of ``dataset`` (one row per run file; runs set
    aside, ``SET_ASIDE``, and step-budget runs left out)."""
    chosen = sorted((run for run in runs if run["dataset"] == dataset and run.get("budget", "minutes") == "minutes"
                     and not run.get("set_aside")), key=lambda run: (run["training_cases"], run["arm"], run["seed"]))
    classes = list(chosen[0]["dice"]) if chosen else []
    rows = ["| training cases | arm | seed | iterations | " + " / ".join(classes) + " | mean Dice |",
            "|---|---|---|---|---|---|"]
    for run in chosen:
        dice = " / ".join(f"{run['dice'][name]:.3f}" for name in classes)
        rows.append(f"| {run['training_cases']} | {run['arm']}: {ARM_LABELS[run['arm']]} | {run['seed']} | "
                    f"{run['iterations']} | {dice} | {run['foreground_mean_dice']:.3f} |")
    return "\n".join(rows)


def finished_runs(workdir: Path) -> list[dict]:
    """Every run file in ``workdir/runs``; those set aside (``SET_ASIDE``) marked with their name."""
    return [json.loads(path.read_text()) | ({"set_aside": path.stem} if path.stem.endswith(SET_ASIDE) else {})
            for path in sorted((workdir / "runs").glob("*.json"))]


ARM_MODES = {"a": "adapters", "b": "full", "c": "full", "d": "full", "e": "adapters", "f": "full"}


def step_costs(workdir: Path, seconds: float) -> dict:
    """Seconds per training iteration of each arm's network on the demo plan (the trainer's step
    on a fixed batch, ``train_speed.model_step``), and the iterations that fit in 10 minutes: the
    first reason an equal-time comparison on a CPU can go either way."""
    from train_speed import _rate, model_step

    costs = {}
    for arm, (backbone, _) in ARMS.items():
        folders = use_work_folders(workdir / f"step_cost_{backbone}")
        source = source_dataset("demo", folders[paths.RAW_VARIABLE])
        dataset_id = int(source.name[len("Dataset"):len("Dataset") + 3])
        plans = plan_and_preprocess(dataset_id, backbone=backbone, num_processes=2)
        config = plans.network.replace(trainable=ARM_MODES[arm], deep_supervision=True)
        step = model_step(config, plans.batch_size, torch.device("cpu"))[0]
        step()  # AdamW's state
        rate = _rate(step, seconds, minimum=3)
        costs[arm] = {"backbone": backbone, "trainable": config.trainable, "patch_size": list(config.patch_size),
                      "batch_size": plans.batch_size, "seconds_per_iteration": 1 / rate["per_second"],
                      "iterations_in_10_minutes": int(600 * rate["per_second"]), "loadavg": load_average()}
        print(arm, json.dumps(costs[arm]))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("./pretraining_benchmark"))
    parser.add_argument("--datasets", nargs="+", default=["demo"], choices=("demo", "brain"))
    parser.add_argument("--cases", nargs="+", default=["2", "5", "all"], help="training cases per run: numbers or 'all'")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time of every run (default 10)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="train every run for this many iterations instead of --minutes (equal steps, not equal time)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-cost", action="store_true",
                        help="only measure each arm's seconds per iteration on the demo plan (CPU)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write the table of every finished run file in --workdir/runs")
    parser.add_argument("--markdown", metavar="DATASET", default=None,
                        help="train nothing: print the README's table of DATASET's runs in --workdir/runs")
    args = parser.parse_args()
    skip_final_validation()
    workdir = args.workdir.resolve()
    if args.step_cost:
        write_result("pretraining_step_cost_cpu.json", {"machine": environment(), "arms": step_costs(workdir, 30.0)})
        return
    if args.markdown:
        print(markdown_table(finished_runs(workdir), args.markdown))
        return
    if args.collect:
        runs = finished_runs(workdir)
        by_budget = {"pretraining_benefit.json": [r for r in runs if r.get("budget", "minutes") == "minutes"]}
        for run in runs:
            if run.get("budget") == "iterations":
                by_budget.setdefault(f"pretraining_benefit_it{run['iterations']}.json", []).append(run)
        for table, chosen in by_budget.items():
            write_result(table, {"machine": environment(), "command": vars(args) | {"workdir": str(workdir)},
                                 "runs": chosen})
        return
    runs = []
    for dataset in args.datasets:
        for cases in args.cases:
            for seed in args.seeds:
                for arm in args.arms:
                    count = None if cases == "all" else int(cases)
                    runs.append(run_one(workdir, dataset, count, arm, seed, args.minutes, args.device, args.iterations))
                    print(json.dumps(runs[-1]))
    table = f"pretraining_benefit_it{args.iterations}.json" if args.iterations else "pretraining_benefit.json"
    write_result(table, {"machine": environment(), "command": vars(args) | {"workdir": str(workdir)},
                                              "runs": runs})


if __name__ == "__main__":
    main()
