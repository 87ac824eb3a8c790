"""Interactive vs automatic model on the demo dataset, trained with the same amount of work.

Both models: vit_tiny from scratch on fold 0 of the demo's ``Dataset990_SyntheticCT``, the same
fixed number of epochs x iterations (optimizer steps, not minutes: the machine may be shared),
the same seed. ``nnSAM3DTrainer`` learns automatic segmentation only; ``nnSAM3DTrainer_interactive``
spends half its batches on simulated clicks (those batches also run 1-3 extra forward passes
without gradient, recorded as training seconds).

Measured on the 4 held-out test images (``imagesTs``/``labelsTs``), without test-time mirroring:

* mean foreground Dice at 0 clicks of both models (goal: the interactive one loses <= 0.02);
* the simulated-user curve of the interactive model (``nnsam3d_evaluate_interactive``'s rule)
  and the smallest class's Dice after 5 clicks vs the automatic model's (goal: >= 0.05 gain);
* seconds per click.

Writes ``benchmarks/results/interactive_vs_automatic.json`` and ``interactive_curve.png``.

    python benchmarks/interactive_vs_automatic.py [--workdir ./interactive_benchmark] [--epochs 21] [--iterations 25]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from nnsam3d import paths
from nnsam3d.demo.run_demo import use_work_folders
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.evaluation.evaluate_folder import evaluate_folders
from nnsam3d.inference.predictor import Predictor
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="./interactive_benchmark")
    parser.add_argument("--epochs", type=int, default=21, help="epochs of both trainings (default 21, the demo's)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 25, the demo's)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    folders = use_work_folders(workdir)
    spec = SyntheticDatasetSpec()
    dataset_dir = folders[paths.RAW_VARIABLE] / spec.folder_name
    if not (dataset_dir / "dataset.json").is_file():
        generate_synthetic_dataset(folders[paths.RAW_VARIABLE], spec)
    plan_and_preprocess(spec.dataset_id, backbone="vit_tiny", num_processes=2)
    description = DatasetDescription.from_file(dataset_dir / "dataset.json")

    result = {"machine": {**environment(), "loadavg_before": load_average()}, "epochs": args.epochs,
              "iterations_per_epoch": args.iterations, "models": {}}
    for trainer in TRAINERS:
        model_dir = paths.training_output_dir(spec.folder_name, trainer, DEFAULT_PLANS_NAME)
        if (model_dir / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
            training_seconds = None  # reused from an earlier run
        else:
            started = time.perf_counter()
            train_fold(trainer, TrainingRequest(dataset=spec.folder_name, fold=FOLD, num_epochs=args.epochs,
                                                iterations_per_epoch=args.iterations, device=args.device, seed=0))
            training_seconds = time.perf_counter() - started
        predictor = Predictor.from_model_folder(model_dir, folds=[FOLD], device=args.device, use_mirroring=False)
        predictions = workdir / "predictions" / trainer
        shutil.rmtree(predictions, ignore_errors=True)
        predictor.predict_folder(dataset_dir / "imagesTs", predictions)
        summary = evaluate_folders(dataset_dir / "labelsTs", predictions, description.labels, description.file_ending)
        entry = {"training_seconds": training_seconds,
                 "dice_0_clicks": {name: summary["mean"][name]["Dice"] for name in summary["mean"]},
                 "foreground_mean_dice_0_clicks": summary["foreground_mean"]["Dice"]}
        if trainer.endswith("interactive"):
            curve = evaluate_interactive(predictor, dataset_dir / "imagesTs", dataset_dir / "labelsTs", args.clicks)
            entry["interactive"] = {k: curve[k] for k in ("clicks", "mean", "mean_over_classes", "seconds_per_click")}
            print(format_curve_table(curve))
            save_curve_png(curve, RESULTS / "interactive_curve.png")
        result["models"][trainer] = entry

    automatic, interactive = (result["models"][t] for t in TRAINERS)
    smallest = SMALLEST_CLASS
    result["loss_at_0_clicks"] = automatic["foreground_mean_dice_0_clicks"] - interactive["foreground_mean_dice_0_clicks"]
    after = interactive["interactive"]["mean"][smallest][str(args.clicks)]
    result[f"{smallest}_gain_after_{args.clicks}_clicks"] = after - automatic["dice_0_clicks"][smallest]
    result["machine"]["loadavg_after"] = load_average()
    write_result("interactive_vs_automatic.json", result)


if __name__ == "__main__":
    main()
