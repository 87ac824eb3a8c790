"""Clicks on small structures: are they respected, do clicked-away false positives go, does the
curve never fall (issue 22, point 9)?

Builds ``Dataset991_SmallStructures`` (:mod:`nnsam3d.demo.small_structures`: nodules and vessel
segments of 15-60 voxels on the network grid, unlabelled fainter decoys) in ``--workdir``, plans
vit_tiny (the CPU default), and trains ``nnSAM3DTrainer_interactive`` on fold 0 for a FIXED
``--epochs`` x ``--iterations`` (not a time budget: the machine may be shared, and the result must
not depend on its load). Then, on the held-out test cases without mirroring:

* the automatic model's detection errors: structures missed, false components found (and how
  many of them lie on decoys), decoys touched;
* the simulated user (``nnsam3d_evaluate_interactive``'s rule) clicks ``--clicks`` times per class
  and case: the Dice curve, and the compliance figures of
  :mod:`nnsam3d.model_selection.click_compliance` (clicked voxel carries the class after a positive
  click, not after a negative one; clicks until a clicked-away false positive is gone; the mean
  curve's largest fall between consecutive clicks); seconds per click.

``CHECKS`` turns the issue's words into numbers; the JSON records each figure against them.
Writes ``benchmarks/results/small_structure_clicks.json`` and ``small_structure_clicks.png`` (for a
size other than the default, ``small_structure_clicks_<E>x<I>.json``/``.png``). Each size and seed
trains in its own sub-folder of the workdir; a rerun reuses the dataset, the preprocessing and a
finished training.

    python benchmarks/small_structure_clicks.py [--workdir ./small_structure_benchmark] [--epochs 30] [--iterations 25]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnsam3d import paths
from nnsam3d.demo.run_demo import use_work_folders
from nnsam3d.demo.small_structures import decoy_masks, generate_small_structure_dataset, small_structure_spec
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.io.geometry import from_canonical, to_canonical
from nnsam3d.io.image_io import read_channels, read_segmentation
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model_selection.interactive_evaluation import evaluate_interactive, format_curve_table, save_curve_png
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.launch import train_fold
from nnsam3d.trainers.registry import INTERACTIVE_TRAINER
from nnsam3d.trainers.request import TrainingRequest

from benchmark_support import RESULTS, environment, load_average, write_result

FOLD = "0"
"""Fold 0 (12 of the 15 training cases) rather than ``all``: its validation predicts 3 held-out
cases, not all 15 training cases with mirroring (minutes on 2 cores), and it is held out."""
DEFAULT_EPOCHS, DEFAULT_ITERATIONS = 30, 25
"""750 iterations: about 12-13 minutes of training on 2 quiet cores, estimated from the demo's
interactive training (about 1.05 s per iteration all in, patch 24 x 72 x 64, batch 2; this plan's
patch is 24 x 64 x 64, batch 2); validation and the evaluation add about 3 minutes."""

CHECKS = {"positive_clicks_respected": 0.95, "negative_clicks_respected": 0.95,
          "false_positives_gone_within_3_clicks": 0.9, "largest_mean_fall_at_most": 0.005}
"""The issue's goals as numbers: almost every click obeyed, a clicked-away false positive gone
within a few clicks, a mean curve that does not fall (beyond noise) from one click to the next."""


def component_errors(prediction: np.ndarray, reference: np.ndarray, label: int, decoys: np.ndarray) -> dict:
    """Detection errors of one class: reference structures the prediction misses entirely, and
    predicted components that touch no reference structure (6-connected components), of which
    those on a decoy (the look-alikes the dataset plants to provoke them)."""
    predicted, true = prediction == label, reference == label
    reference_components, num_reference = ndimage.label(true)
    predicted_components, num_predicted = ndimage.label(predicted)
    found = set(np.unique(reference_components[predicted])) - {0}
    real = set(np.unique(predicted_components[true])) - {0}
    on_decoys = set(np.unique(predicted_components[decoys])) - {0} - real
    return {"structures": num_reference, "missed": num_reference - len(found),
            "predicted_components": num_predicted, "false_components": num_predicted - len(real),
            "false_components_on_decoys": len(on_decoys)}


def automatic_errors(predictor: Predictor, dataset_dir: Path, description: DatasetDescription,
                     decoys: dict[str, np.ndarray]) -> dict:
    """:func:`component_errors` of the automatic model, summed over the test cases, per class;
    ``decoys_hit``: decoys (of all test cases) that some class's prediction touches."""
    totals: dict[str, dict[str, int]] = {}
    decoys_hit = decoy_count = 0
    for image_file in sorted((dataset_dir / "imagesTs").glob(f"*_0000{description.file_ending}")):
        case_id = image_file.name[: -len(f"_0000{description.file_ending}")]
        channels, geometry = read_channels([image_file])
        reference, _ = read_segmentation(dataset_dir / "labelsTs" / f"{case_id}{description.file_ending}")
        prediction = predictor.predict_volume(np.stack([from_canonical(c, geometry) for c in channels]),
                                              geometry.affine_array)
        canonical = to_canonical(prediction, geometry.affine_array)
        decoy_components, count = ndimage.label(decoys[case_id])
        decoy_count += count
        decoys_hit += len(set(np.unique(decoy_components[canonical > 0])) - {0})
        for value in description.foreground_labels:
            counts = component_errors(canonical, reference, value, decoys[case_id])
            class_totals = totals.setdefault(description.label_name(value), {})
            for key, count in counts.items():
                class_totals[key] = class_totals.get(key, 0) + count
    return {**totals, "decoys": decoy_count, "decoys_hit": decoys_hit}


def structure_sizes(dataset_dir: Path, description: DatasetDescription) -> dict:
    """Smallest, median and largest component (voxels) per class over every label map."""
    sizes = {description.label_name(v): [] for v in description.foreground_labels}
    for path in sorted(dataset_dir.glob(f"labels*/*{description.file_ending}")):
        label, _ = read_segmentation(path)
        for value in description.foreground_labels:
            components, _ = ndimage.label(label == value)
            sizes[description.label_name(value)] += np.bincount(components.ravel())[1:].tolist()
    return {name: {"count": len(s), "min": min(s), "median": float(np.median(s)), "max": max(s)}
            for name, s in sizes.items() if s}


def train(dataset: str, args, model_dir: Path) -> dict:
    """Train (or reuse) the interactive model; its training figures."""
    final = model_dir / f"fold_{FOLD}" / "checkpoint_final.pth"
    reused = final.is_file()
    if not reused:
        train_fold(INTERACTIVE_TRAINER, TrainingRequest(
            dataset=dataset, fold=FOLD, num_epochs=args.epochs, iterations_per_epoch=args.iterations,
            device=args.device, seed=args.seed))
    history = load_checkpoint(final).training_state["log"]["history"]
    if len(history) != args.epochs:
        raise SystemExit(f"{final} holds {len(history)} epochs, not {args.epochs}: an unfinished or different "
                         "training; delete its folder or use another --workdir")
    return {"reused": reused, "epochs": len(history), "iterations_per_epoch": args.iterations,
            "seconds": float(sum(epoch["seconds"] for epoch in history)), "seed": args.seed}


def checks(summary: dict) -> dict:
    """Each figure of ``CHECKS`` with its threshold and whether it is met (None: no such clicks)."""
    figures = {
        "positive_clicks_respected": summary["clicks_respected"]["positive"],
        "negative_clicks_respected": summary["clicks_respected"]["negative"],
        "false_positives_gone_within_3_clicks": summary["false_positive_removal"]["removed_within"]["3"],
        "largest_mean_fall_at_most": summary["largest_mean_fall"],
    }
    return {key: {"value": value, "threshold": CHECKS[key],
                  "met": None if value is None else (value <= CHECKS[key] if key.endswith("at_most")
                                                     else value >= CHECKS[key])}
            for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="./small_structure_benchmark",
                        help="raw dataset, preprocessing and one model folder per size and seed; reused by reruns")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="iterations per epoch")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    parser.add_argument("--clicks", type=int, default=10, help="simulated clicks per class and test case")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    started, loadavg_before = time.monotonic(), load_average()
    workdir = Path(args.workdir).resolve() / f"data_seed_{args.data_seed}"
    folders = use_work_folders(workdir)
    run_name = f"{args.epochs}x{args.iterations}_seed{args.seed}"
    folders[paths.RESULTS_VARIABLE] = workdir / "results" / run_name
    folders[paths.RESULTS_VARIABLE].mkdir(parents=True, exist_ok=True)
    os.environ[paths.RESULTS_VARIABLE] = str(folders[paths.RESULTS_VARIABLE])
    spec = small_structure_spec(seed=args.data_seed)
    dataset_dir = folders[paths.RAW_VARIABLE] / spec.folder_name
    if not (dataset_dir / "dataset.json").is_file():
        generate_small_structure_dataset(folders[paths.RAW_VARIABLE], spec)
    plans = plan_and_preprocess(spec.dataset_id, verify=True, backbone="vit_tiny", num_processes=2)
    if tuple(plans.target_spacing) != tuple(spec.spacing):
        raise SystemExit(f"the plan resamples to {plans.target_spacing} mm, not the files' {spec.spacing} mm: "
                         "the structures' sizes would not hold on the network grid")
    description = DatasetDescription.from_file(dataset_dir / "dataset.json")
    model_dir = paths.training_output_dir(spec.folder_name, INTERACTIVE_TRAINER, DEFAULT_PLANS_NAME)
    training = train(spec.folder_name, args, model_dir)

    predictor = Predictor.from_model_folder(model_dir, folds=[FOLD], device=args.device, use_mirroring=False)
    errors = automatic_errors(predictor, dataset_dir, description, decoy_masks(spec))
    evaluation_started = time.monotonic()
    summary = evaluate_interactive(predictor, dataset_dir / "imagesTs", dataset_dir / "labelsTs", args.clicks)
    evaluation_seconds = time.monotonic() - evaluation_started
    print(format_curve_table(summary))

    default_size = (args.epochs, args.iterations) == (DEFAULT_EPOCHS, DEFAULT_ITERATIONS)
    stem = "small_structure_clicks" + ("" if default_size else f"_{args.epochs}x{args.iterations}")
    save_curve_png(summary, RESULTS / f"{stem}.png")
    keys = ("clicks", "max_clicks", "mean", "mean_over_classes", "mean_every_click", "clicks_respected",
            "false_positive_removal", "largest_mean_fall", "per_class", "seconds_per_click")
    result = {
        "machine": {**environment(), "loadavg_before": loadavg_before},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dataset": {"name": spec.folder_name, "data_seed": args.data_seed, "training_cases": spec.num_training,
                    "test_cases": spec.num_test, "shape": list(spec.shape), "spacing_mm": list(spec.spacing),
                    "structure_voxels": structure_sizes(dataset_dir, description)},
        "plans": {"target_spacing": list(plans.target_spacing), "patch_size": list(plans.network.patch_size),
                  "batch_size": plans.batch_size},
        "training": training,
        "automatic_detection_errors": errors,
        "interactive": {key: summary[key] for key in keys},
        "checks": checks(summary),
        "evaluation_seconds": evaluation_seconds,
        "total_seconds": time.monotonic() - started,
        "per_case": summary["per_case"],
    }
    result["machine"]["loadavg_after"] = load_average()
    write_result(f"{stem}.json", result)


if __name__ == "__main__":
    main()
