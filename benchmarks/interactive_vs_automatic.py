"""Interactive vs automatic model on the demo dataset, trained within the same time budget.

Both models: vit_tiny from scratch on fold 0 of the demo's ``Dataset990_SyntheticCT``, the same
seed, at most the same epochs x iterations. ``nnSAM3DTrainer`` learns automatic segmentation only,
with the demo's schedule; its training seconds (the sum of its epochs' wall times, read from its
``checkpoint_final.pth``) become ``nnSAM3DTrainer_interactive``'s ``--time-budget-minutes``. The
interactive trainer, after the first 40% of its schedule, spends half its batches on simulated
clicks, which cost 1-3 extra decoder passes each, so it stops after fewer epochs (the
learning-rate decay is fitted to the budget). Run it on a quiet machine: the budget is wall time.
Every figure is taken per seed and averaged over the seeds.

Measured on the 4 held-out test images (``imagesTs``/``labelsTs``), without test-time mirroring:

* mean foreground Dice at 0 clicks of both models (goal: the interactive one loses <= 0.02);
* the simulated-user curve of the interactive model (``nnsam3d_evaluate_interactive``'s rule)
  and the smallest class's Dice after 5 clicks vs the automatic model's (goal: >= 0.05 gain; the
  gain over the interactive model's own start is recorded too);
* seconds per click.

Writes ``benchmarks/results/interactive_vs_automatic.json`` and ``interactive_curve_seedN.png``.

    python benchmarks/interactive_vs_automatic.py [--workdir ./interactive_benchmark] [--seeds 0 1] [--epochs 21]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from nnsam3d import paths
from nnsam3d.demo.run_demo import use_work_folders
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.evaluation.evaluate_folder import evaluate_folders
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model_selection.interactive_evaluation import evaluate_interactive, format_curve_table, save_curve_png
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.launch import train_fold
from nnsam3d.trainers.request import TrainingRequest

from benchmark_support import load_average, RESULTS, environment, write_result

TRAINERS = ("nnSAM3DTrainer", "nnSAM3DTrainer_interactive")
FOLD = "0"
SMALLEST_CLASS = "lesion"
"""The demo's smallest structure (a few hundred voxels against the liver's tens of thousands)."""


def run_seed(workdir: Path, seed: int, args) -> dict:
    """Both trainings and evaluations with one seed, in ``workdir`` (its own raw, preprocessed, results)."""
    folders = use_work_folders(workdir)
    spec = SyntheticDatasetSpec()
    dataset_dir = folders[paths.RAW_VARIABLE] / spec.folder_name
    if not (dataset_dir / "dataset.json").is_file():
        generate_synthetic_dataset(folders[paths.RAW_VARIABLE], spec)
    plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=2)
    description = DatasetDescription.from_file(dataset_dir / "dataset.json")

    result = {"seed": seed, "models": {}}
    budget_minutes = None
    for trainer in TRAINERS:
        model_dir = paths.training_output_dir(spec.folder_name, trainer, DEFAULT_PLANS_NAME)
        final = model_dir / f"fold_{FOLD}" / "checkpoint_final.pth"
        if not final.is_file():  # else reused from an earlier run
            train_fold(trainer, TrainingRequest(dataset=spec.folder_name, fold=FOLD, num_epochs=args.epochs,
                                                iterations_per_epoch=args.iterations, device=args.device, seed=seed,
                                                time_budget_minutes=budget_minutes))
        epochs = load_checkpoint(final).training_state["log"]["history"]
        training_seconds = sum(epoch["seconds"] for epoch in epochs)
        if budget_minutes is None:
            budget_minutes = training_seconds / 60
        predictor = Predictor.from_model_folder(model_dir, folds=[FOLD], device=args.device, use_mirroring=False)
        predictions = workdir / "predictions" / trainer
        shutil.rmtree(predictions, ignore_errors=True)
        predictor.predict_folder(dataset_dir / "imagesTs", predictions)
        summary = evaluate_folders(dataset_dir / "labelsTs", predictions, description.labels, description.file_ending)
        entry = {"training_seconds": training_seconds, "epochs_trained": len(epochs),
                 "dice_0_clicks": {name: summary["mean"][name]["Dice"] for name in summary["mean"]},
                 "foreground_mean_dice_0_clicks": summary["foreground_mean"]["Dice"]}
        if trainer.endswith("interactive"):
            curve = evaluate_interactive(predictor, dataset_dir / "imagesTs", dataset_dir / "labelsTs", args.clicks)
            entry["interactive"] = {k: curve[k] for k in ("clicks", "mean", "mean_over_classes", "seconds_per_click")}
            print(f"seed {seed}:\n{format_curve_table(curve)}")
            save_curve_png(curve, RESULTS / f"interactive_curve_seed{seed}.png")
        result["models"][trainer] = entry
    result["time_budget_minutes"] = budget_minutes
    result.update(goal_figures(result["models"], args.clicks))
    return result


def goal_figures(models: dict, clicks: int) -> dict:
    """The issue's two figures: mean-Dice loss at 0 clicks; the smallest class's gain after ``clicks``
    clicks over the automatic model (and over the interactive model's own start)."""
    automatic, interactive = (models[t] for t in TRAINERS)
    after = interactive["interactive"]["mean"][SMALLEST_CLASS][str(clicks)]
    return {
        "loss_at_0_clicks": automatic["foreground_mean_dice_0_clicks"] - interactive["foreground_mean_dice_0_clicks"],
        f"{SMALLEST_CLASS}_gain_after_{clicks}_clicks": after - automatic["dice_0_clicks"][SMALLEST_CLASS],
        f"{SMALLEST_CLASS}_gain_after_{clicks}_clicks_over_own_start":
            after - interactive["dice_0_clicks"][SMALLEST_CLASS],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="./interactive_benchmark",
                        help="one sub-folder per seed (seed_0, seed_1, ...); models found there are reused")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="training seeds (default 0 1): on 4 test images one seed moves the kidney by up to 0.08")
    parser.add_argument("--epochs", type=int, default=21, help="epochs of the automatic training (default 21, the demo's)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 25, the demo's)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    result = {"machine": {**environment(), "loadavg_before": load_average()}, "epochs": args.epochs,
              "iterations_per_epoch": args.iterations,
              "seeds": [run_seed(workdir / f"seed_{seed}", seed, args) for seed in args.seeds]}
    keys = [k for k in result["seeds"][0] if k.startswith(("loss_at", SMALLEST_CLASS))]
    result["mean_over_seeds"] = {k: float(np.mean([r[k] for r in result["seeds"]])) for k in keys}
    for trainer in TRAINERS:
        result["mean_over_seeds"][f"{trainer}_dice_0_clicks"] = {
            name: float(np.mean([r["models"][trainer]["dice_0_clicks"][name] for r in result["seeds"]]))
            for name in result["seeds"][0]["models"][trainer]["dice_0_clicks"]}
    curves = [r["models"][TRAINERS[1]]["interactive"]["mean"] for r in result["seeds"]]
    result["mean_over_seeds"]["interactive_curve"] = {
        name: {n: float(np.mean([c[name][n] for c in curves])) for n in curves[0][name]} for name in curves[0]}
    result["machine"]["loadavg_after"] = load_average()
    print(json.dumps(result["mean_over_seeds"], indent=1))
    write_result("interactive_vs_automatic.json", result)


if __name__ == "__main__":
    main()
