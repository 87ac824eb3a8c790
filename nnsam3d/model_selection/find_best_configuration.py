"""Choose what to predict with, from the cross-validation, and how to postprocess it.

For each trainer (model folder ``TRAINER__PLANS``) the validation predictions of its folds
(``fold_K/validation/CASE<ending>``, written by ``nnsam3d_train``) are gathered into
``crossval_results_folds_<folds>/`` and evaluated against the raw ``labelsTr``. Where every
trainer of a combination saved class probabilities (``nnsam3d_train --npz``), the combination
is evaluated as an ensemble too: probabilities averaged per case, argmax, written in the
case's geometry into ``ensembles/ensemble__A__B__PLANS/crossval_results_folds_<folds>/``.

The candidate with the best mean foreground Dice wins (ties go to the simpler one: single
models before ensembles). On its cross-validation predictions, each foreground class gets
"keep the largest connected component" when that raises the class's mean Dice over the cases;
the decision goes to ``postprocessing.json`` in the chosen model (or ensemble) folder, and the
comparison to ``$nnSAM3D_results/DatasetXXX_Name/best_configuration.json``.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnsam3d import paths
from nnsam3d.evaluation.evaluate_folder import (
    annotated_region,
    evaluate_folders,
    foreground_labels,
    prediction_files,
    read_label_pair,
)
from nnsam3d.evaluation.metrics import dice
from nnsam3d.inference.export import load_probabilities_file
from nnsam3d.inference.model_folders import available_folds, ensemble_folder
from nnsam3d.inference.postprocessing import (
    POSTPROCESSING_FILENAME,
    PostprocessingRules,
    largest_component,
)
from nnsam3d.io.atomic import atomic_path, write_json_atomic
from nnsam3d.io.image_io import write_segmentation
from nnsam3d.io.raw_dataset import DatasetDescription

VALIDATION_FOLDER = "validation"
BEST_CONFIGURATION_FILENAME = "best_configuration.json"
MIN_IMPROVEMENT = 1e-6
"""A class gets largest-component postprocessing only when its mean Dice rises by more than this
(rounding noise must not decide)."""


class ConfigurationError(ValueError):
    """Missing cross-validation results; the message says which and how to produce them."""


@dataclass
class Candidate:
    """One configuration evaluated on the cross-validation.

    name: trainer name, or ``ensemble__A__B__PLANS``. trainers: its trainers.
    folder: model (or ensemble) folder; postprocessing.json goes there if it wins.
    predictions: folder of its cross-validation label maps. summary: their evaluation.
    """

    name: str
    trainers: tuple[str, ...]
    folder: Path
    predictions: Path
    summary: dict

    @property
    def foreground_dice(self) -> float:
        value = self.summary["foreground_mean"]["Dice"]
        return float("-inf") if value is None else float(value)


def _folds_text(folds: Sequence[str]) -> str:
    return "_".join(str(f) for f in folds)


def validation_folds(model_dir: Path) -> list[str]:
    """Folds of a model folder that have validation predictions, sorted numerically."""
    # fold_all trains on every case: its validation cases overlap those of the other folds.
    return [
        fold for fold in available_folds(model_dir)
        if fold != "all" and (model_dir / f"fold_{fold}" / VALIDATION_FOLDER).is_dir()
    ]


def _validation_files(model_dir: Path, fold: str, file_ending: str) -> list[Path]:
    """A fold's validation label maps; none when the fold has no validation folder."""
    folder = model_dir / f"fold_{fold}" / VALIDATION_FOLDER
    return prediction_files(folder, file_ending) if folder.is_dir() else []


def gather_cross_validation(
    model_dir: Path, folds: Sequence[str], file_ending: str, target: Path, with_probabilities: bool = False
) -> list[str]:
    """Copy the folds' validation label maps (and ``.npz`` when asked) into ``target``; returns case ids.

    Raises ConfigurationError when a fold has no validation predictions, a case appears in two
    folds, or (``with_probabilities``) a probabilities file is missing.
    """
    if target.exists():  # ours to rebuild: stale cases of earlier splits must not be evaluated
        shutil.rmtree(target)
    target.mkdir(parents=True)
    seen: dict[str, str] = {}
    for fold in folds:
        folder = model_dir / f"fold_{fold}" / VALIDATION_FOLDER
        files = _validation_files(model_dir, fold, file_ending)
        if not files:
            raise ConfigurationError(
                f"{folder}: no validation predictions. Train fold {fold} (nnsam3d_train DATASET {fold} -tr "
                f"{model_dir.name.split('__')[0]}), rerun its validation with --val, or choose folds with -f."
            )
        for file in files:
            case_id = file.name[: -len(file_ending)]
            if case_id in seen:
                raise ConfigurationError(
                    f"{file}: case '{case_id}' is also in fold {seen[case_id]}'s validation; the folds overlap."
                )
            seen[case_id] = fold
            sources = [file]
            if with_probabilities:
                probabilities = folder / f"{case_id}.npz"
                if not probabilities.is_file():
                    raise ConfigurationError(
                        f"{probabilities}: missing; ensembles need the validation probabilities "
                        f"(nnsam3d_train DATASET {fold} --val --npz)."
                    )
                sources.append(probabilities)
            for source in sources:
                with atomic_path(target / source.name) as temporary:
                    shutil.copyfile(source, temporary)
    return sorted(seen)


def has_probabilities(model_dir: Path, folds: Sequence[str], file_ending: str) -> bool:
    """Whether every validation prediction of the folds has its ``.npz``."""
    return all(
        file.with_name(f"{file.name[: -len(file_ending)]}.npz").is_file()
        for fold in folds
        for file in _validation_files(model_dir, fold, file_ending)
    )


def ensemble_predictions(member_folders: Sequence[Path], case_ids: Sequence[str], file_ending: str, target: Path) -> None:
    """Average the members' probabilities (``CASE.npz``) per case and write the argmax label maps."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for case_id in case_ids:
        total, properties = None, None
        for folder in member_folders:
            probabilities, properties = load_probabilities_file(folder / f"{case_id}.npz")
            if total is None:
                total = probabilities.astype(np.float32)
            elif probabilities.shape != total.shape:
                raise ConfigurationError(
                    f"{folder / (case_id + '.npz')}: probabilities of shape {probabilities.shape} do not match "
                    f"{member_folders[0] / (case_id + '.npz')} ({total.shape})."
                )
            else:
                total += probabilities
        # Probabilities are stored on the full canonical grid: argmax, then undo the orientation.
        write_segmentation(np.argmax(total, axis=0).astype(np.int16), properties.geometry, target / f"{case_id}{file_ending}")


def decide_postprocessing(
    reference_dir: Path, candidate: Candidate, case_ids: Sequence[str], labels: dict[str, int], file_ending: str
) -> PostprocessingRules:
    """Per foreground class: keep only the largest connected component when that raises the
    class's mean Dice over the cases (undefined Dice, both masks empty, left out).

    The Dice without postprocessing comes from the candidate's evaluation (``summary``).
    """
    prediction_dir = candidate.predictions
    evaluated = {case["case_id"]: case["metrics"] for case in candidate.summary["per_case"]}
    before: dict[str, list[float]] = {name: [] for name in foreground_labels(labels)}
    after: dict[str, list[float]] = {name: [] for name in foreground_labels(labels)}
    for case_id in case_ids:
        reference, prediction, _spacing = read_label_pair(
            reference_dir / f"{case_id}{file_ending}", prediction_dir / f"{case_id}{file_ending}"
        )
        annotated = annotated_region(reference, labels)  # scored as the evaluation scores (ignore label)
        for name, value in foreground_labels(labels).items():
            recorded = evaluated[case_id][name]["Dice"]
            before[name].append(float("nan") if recorded is None else recorded)
            kept = largest_component(prediction == value)
            after[name].append(dice(reference == value, kept if annotated is None else kept & annotated))
    keep, evidence = [], {}
    for name, value in foreground_labels(labels).items():
        mean_before = float(np.nanmean(before[name])) if not np.all(np.isnan(before[name])) else None
        mean_after = float(np.nanmean(after[name])) if not np.all(np.isnan(after[name])) else None
        helps = mean_before is not None and mean_after is not None and mean_after > mean_before + MIN_IMPROVEMENT
        if helps:
            keep.append(value)
        evidence[name] = {"label": value, "mean_dice_without": mean_before, "mean_dice_with_largest_component": mean_after,
                          "keep_largest_component": helps}
    return PostprocessingRules(
        keep_largest_component=tuple(keep),
        evidence={"predictions": str(prediction_dir), "reference": str(reference_dir), "cases": len(case_ids),
                  "classes": evidence},
    )


def predict_command(dataset_name: str, trainers: Sequence[str], plans_name: str, folds: Sequence[str]) -> str:
    """The ``nnsam3d_predict`` command line for a configuration."""
    return (
        f"nnsam3d_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset_name} -tr {' '.join(trainers)} "
        f"-p {plans_name} -f {' '.join(folds)}"
    )


def find_best_configuration(
    dataset: str | int,
    trainers: Sequence[str],
    plans_name: str,
    folds: Sequence[int | str] | None = None,
    allow_ensembles: bool = True,
    num_processes: int = 1,
    message: Callable[[str], None] = print,
) -> dict:
    """Evaluate every trainer (and ensembles) on the cross-validation, write postprocessing.json
    into the winner's folder and ``best_configuration.json``; returns the latter's content.

    folds: None takes the folds with validation predictions in the first trainer's folder.
    """
    dataset_name = paths.resolve_dataset_name(dataset)
    raw_dir = paths.raw_root() / dataset_name
    description = DatasetDescription.from_file(raw_dir / "dataset.json")
    reference_dir = raw_dir / "labelsTr"
    ending = description.file_ending
    trainers = list(dict.fromkeys(trainers))
    model_dirs = {trainer: paths.training_output_dir(dataset_name, trainer, plans_name) for trainer in trainers}
    first = model_dirs[trainers[0]]
    # fold 'all' validates on its own training cases: choosing on its Dice would fit the choice
    # (and the postprocessing) to the training data. Its model is used as it is.
    use_fold_all = (f"Predict with fold 'all' as it is (no postprocessing): "
                    f"{predict_command(dataset_name, trainers[:1], plans_name, ['all'])}")
    if folds is None:
        folds = validation_folds(first)
        if not folds and "all" in available_folds(first):
            raise ConfigurationError(
                f"{first}: only fold 'all' is trained, and choosing a configuration and its postprocessing needs "
                f"cross-validation folds (nnsam3d_train {dataset_name} K for K = 0..4, which needs at least 5 "
                f"training cases). {use_fold_all}"
            )
        if not folds:
            raise ConfigurationError(
                f"{first}: no fold_K/{VALIDATION_FOLDER}/ found. Train folds first "
                f"(nnsam3d_train {dataset_name} K -tr {trainers[0]} -p {plans_name})."
            )
    folds = [str(f) for f in folds]
    if "all" in folds:
        raise ConfigurationError(
            f"{first / 'fold_all' / VALIDATION_FOLDER}: fold 'all' was validated on its own training cases, so it "
            f"cannot choose a configuration or postprocessing; give cross-validation folds with -f. {use_fold_all}"
        )
    collected = f"crossval_results_folds_{_folds_text(folds)}"

    candidates: list[Candidate] = []
    case_ids: list[str] = []
    with_npz: list[str] = []
    for trainer, model_dir in model_dirs.items():
        target = model_dir / collected
        if allow_ensembles and has_probabilities(model_dir, folds, ending):
            with_npz.append(trainer)
        ensemble_member = len(trainers) > 1 and trainer in with_npz
        trainer_cases = gather_cross_validation(model_dir, folds, ending, target, with_probabilities=ensemble_member)
        if case_ids and trainer_cases != case_ids:
            raise ConfigurationError(
                f"{target}: {trainer} validated other cases than {trainers[0]} on folds {', '.join(folds)}; "
                f"trainers are compared on the same splits (splits_final.json)."
            )
        case_ids = trainer_cases
        summary = evaluate_folders(reference_dir, target, description.labels, ending,
                                   output_file=target / "summary.json", num_processes=num_processes, chill=True)
        candidates.append(Candidate(trainer, (trainer,), model_dir, target, summary))
        message(f"{trainer}: mean foreground Dice {candidates[-1].foreground_dice:.4f} on folds {', '.join(folds)}")

    if allow_ensembles:
        for missing in sorted(set(trainers) - set(with_npz)):
            if len(trainers) > 1:
                message(f"{missing}: left out of ensembles (no validation .npz; train with --npz or rerun --val --npz)")
        for size in range(2, len(with_npz) + 1):
            for members in itertools.combinations(with_npz, size):
                folder = ensemble_folder(dataset_name, members, plans_name)
                target = folder / collected
                ensemble_predictions([model_dirs[m] / collected for m in members], case_ids, ending, target)
                summary = evaluate_folders(reference_dir, target, description.labels, ending,
                                           output_file=target / "summary.json", num_processes=num_processes, chill=True)
                candidates.append(Candidate(folder.name, tuple(members), folder, target, summary))
                message(f"{folder.name}: mean foreground Dice {candidates[-1].foreground_dice:.4f}")

    best = max(candidates, key=lambda c: c.foreground_dice)  # max keeps the first of equals
    rules = decide_postprocessing(reference_dir, best, case_ids, description.labels, ending)
    rules.save(best.folder / POSTPROCESSING_FILENAME)
    names = {v: k for k, v in description.labels.items()}
    command = predict_command(dataset_name, best.trainers, plans_name, folds)
    result = {
        "dataset": dataset_name,
        "plans": plans_name,
        "folds": folds,
        "candidates": [
            {"name": c.name, "trainers": list(c.trainers), "foreground_mean_dice": c.summary["foreground_mean"]["Dice"],
             "mean": c.summary["mean"], "predictions": str(c.predictions), "summary": str(c.predictions / "summary.json")}
            for c in candidates
        ],
        "best": {"name": best.name, "trainers": list(best.trainers), "folder": str(best.folder),
                 "foreground_mean_dice": best.summary["foreground_mean"]["Dice"]},
        "postprocessing": {"file": str(best.folder / POSTPROCESSING_FILENAME), **rules.to_json()},
        "predict_command": command,
    }
    write_json_atomic(paths.results_dataset_dir(dataset_name) / BEST_CONFIGURATION_FILENAME, result)
    message(f"best: {best.name} (mean foreground Dice {best.foreground_dice:.4f})")
    message(f"postprocessing: {rules.describe(names)} → {best.folder / POSTPROCESSING_FILENAME}")
    message("predict new cases with:\n  " + command)
    return result
