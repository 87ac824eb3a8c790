"""The training page: ``nnsam3d_report RESULTS_FOLDER -o report/``.

For a model folder (``$nnSAM3D_results/DatasetXXX_Name/TRAINER__PLANS``), or every model
folder of a dataset's results folder: the training curves of every fold (the ``progress.png``
the trainer keeps up to date, embedded) and the cross-validation table (each fold's
``validation/summary.json``: mean Dice per class and foreground mean, and their mean over
the folds); the dataset's ``best_configuration.json`` when present.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from nnsam3d.inference.model_folders import available_folds
from nnsam3d.io.atomic import read_json
from nnsam3d.reporting.html_page import Page, Section, plain_table

PROGRESS_FILENAME, SUMMARY_PATH = "progress.png", ("validation", "summary.json")
BEST_CONFIGURATION_FILENAME = "best_configuration.json"


def fold_folders(model_dir: Path) -> list[Path]:
    """``fold_0`` ... ``fold_all`` folders of a model folder, in fold order."""
    return [model_dir / f"fold_{fold}" for fold in available_folds(model_dir)]


def model_folders(results_dir: Path) -> list[Path]:
    """The model folder itself when it holds folds, else its subfolders that do."""
    if fold_folders(results_dir):
        return [results_dir]
    return sorted(p for p in results_dir.iterdir() if p.is_dir() and fold_folders(p))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cross_validation_table(model_dir: Path) -> str:
    """Per fold: mean Dice of each class and the foreground mean (validation cases); then the
    mean over the cross-validation folds that have a summary. Fold ``all`` gets its row but no
    share of the mean: it was validated on its own training cases."""
    summaries = {}
    for fold in fold_folders(model_dir):
        path = fold.joinpath(*SUMMARY_PATH)
        if path.is_file():
            summaries[fold.name] = read_json(path)
    if not summaries:
        return "<p>No fold has validation/summary.json yet (written when a fold's training finishes).</p>"
    classes = list(next(iter(summaries.values()))["mean"])
    rows, columns = [], {name: [] for name in [*classes, "foreground"]}
    for fold, summary in summaries.items():
        values = [summary["mean"].get(name, {}).get("Dice") for name in classes]
        values.append(summary["foreground_mean"]["Dice"])
        held_out = fold != "fold_all"
        for name, value in zip(columns, values):
            if value is not None and held_out:
                columns[name].append(value)
        cases = len(summary.get("per_case", []))
        rows.append([fold if held_out else f"{fold} (its training cases)", str(cases), *map(_cell, values)])
    if any(columns.values()):
        means = [float(np.mean(v)) if v else None for v in columns.values()]
        rows.append(["mean over folds", "", *map(_cell, means)])
    return plain_table(["fold", "cases", *[f"{name} Dice" for name in classes], "foreground mean Dice"], rows)


def training_curves(model_dir: Path) -> str:
    pictures = []
    for fold in fold_folders(model_dir):
        path = fold / PROGRESS_FILENAME
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            pictures.append(f'<img alt="{fold.name}" title="{fold.name}" src="data:image/png;base64,{data}">')
        else:
            pictures.append(f"<p>{html.escape(fold.name)}: no {PROGRESS_FILENAME} yet.</p>")
    return f'<div class="figures">{"".join(pictures)}</div>'


def training_page(results_dir: str | os.PathLike) -> Page:
    """The page of a model folder or a dataset's results folder (see the module)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: results folder not found.")
    models = model_folders(results_dir)
    if not models:
        raise FileNotFoundError(f"{results_dir}: no fold_K folders here or in its subfolders; give a model folder "
                                f"($nnSAM3D_results/DatasetXXX_Name/TRAINER__PLANS) or a dataset's results folder.")
    sections = []
    for model in models:
        sections.append(Section(f"{model.name}: cross-validation (validation cases of each fold)",
                                cross_validation_table(model)))
        sections.append(Section(f"{model.name}: training curves of every fold", training_curves(model)))
    best = (results_dir if len(models) > 1 else results_dir.parent) / BEST_CONFIGURATION_FILENAME
    if best.is_file():
        content = json.dumps(read_json(best), indent=2)
        sections.append(Section(f"{best.name} (nnsam3d_find_best_configuration)", f"<pre>{html.escape(content)}</pre>"))
    summary = f"{results_dir}: {len(models)} model folder(s), folds " + "; ".join(
        f"{m.name}: {', '.join(f.name[5:] for f in fold_folders(m))}" for m in models)
    return Page("nnsam3d training results", summary, sections=sections)
