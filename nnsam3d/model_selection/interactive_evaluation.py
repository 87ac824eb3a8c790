"""Evaluate an interactive model as a simulated user would use it.

Per case and foreground class: start from the automatic segmentation, then click up to
``max_clicks`` times, each click placed by the training rule on the current segmentation
against the reference (:mod:`nnsam3d.interactive.simulated_user`, at the centre of the largest
error region, deterministic), and record the class's Dice after every click. The class's clicks
are then reset, so every class starts from the automatic result. The summary holds each curve,
the mean curve per class and over classes at ``CURVE_POINTS`` clicks (and at every click count,
``mean_every_click``), seconds per click (wall time of ``session.click``: decoders, encoder when a
tile is new, export to the input grid), and whether the clicks were obeyed
(:mod:`click_compliance`: respected clicks, false positives clicked away, the mean curve's largest
fall; per case, every click's record).

The classes are the dataset's foreground labels. With an ignore label (unannotated voxels) Dice
counts the annotated voxels only, as ``evaluation.evaluate_folder`` does, and the simulated user
never clicks where the reference says nothing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnsam3d.evaluation.metrics import dice
from nnsam3d.inference.case_inputs import find_input_cases
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_enforcement import clicked_voxel
from nnsam3d.interactive.session import open_session
from nnsam3d.interactive.simulated_user import annotated_voxels, error_click
from nnsam3d.io.atomic import atomic_path, write_json_atomic
from nnsam3d.io.geometry import from_canonical
from nnsam3d.io.image_io import read_channels, read_segmentation
from nnsam3d.model_selection.click_compliance import ClickTracker, compliance_summary, format_compliance

CURVE_POINTS = (0, 1, 2, 3, 5, 10)


class InteractiveEvaluationError(ValueError):
    """Missing reference files or no cases; the message names them."""


def class_curve(session, reference: np.ndarray, label: int, max_clicks: int, spacing: Sequence[float],
                seconds: list[float], ignore_label: int | None = None,
                tracker: ClickTracker | None = None) -> list[float]:
    """Dice of ``label`` after 0..max_clicks simulated clicks (canonical arrays), over the voxels
    the reference annotates; appends click times to ``seconds``. tracker: records whether each
    click was obeyed (:class:`click_compliance.ClickTracker` of ``label``)."""
    annotated = annotated_voxels(reference, ignore_label)

    def current_dice() -> float:
        return dice(reference == label, (session.canonical_labels == label) & annotated)

    curve = [current_dice()]
    canonical_affine = session.geometry.canonical_affine
    for _ in range(max_clicks):
        click = error_click(session.canonical_labels, reference, label, spacing, ignore_label=ignore_label)
        if click is None:  # perfect: the user stops, Dice stays
            curve.append(curve[-1])
            continue
        point_mm = (canonical_affine @ np.array([*click.position, 1.0]))[:3]
        if tracker is not None:
            tracker.before_click(session.canonical_labels, reference, clicked_voxel(click.position), click.positive,
                                 annotated)
        started = time.perf_counter()
        session.click(point_mm, positive=click.positive, label=label)
        seconds.append(time.perf_counter() - started)
        if tracker is not None:
            tracker.after_click(session.canonical_labels)
        curve.append(current_dice())
    session.reset(label)
    return curve


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def evaluate_interactive(
    predictor: Predictor,
    images: str | Path,
    references: str | Path,
    max_clicks: int = 10,
    message: Callable[[str], None] = print,
) -> dict:
    """Simulated-user evaluation of ``predictor``'s model on the cases in ``images`` against
    ``references/CASE<file ending>``. Returns the summary (see module)."""
    description = predictor.description
    selection = find_input_cases(images, description.file_ending, description.num_channels)
    if selection.problems:
        raise InteractiveEvaluationError("; ".join(selection.problems.values()))
    if not selection.cases:
        raise InteractiveEvaluationError(f"{images}: no cases")
    missing = [str(Path(references) / f"{case.case_id}{description.file_ending}") for case in selection.cases
               if not (Path(references) / f"{case.case_id}{description.file_ending}").is_file()]
    if missing:
        raise InteractiveEvaluationError(f"reference label maps missing: {', '.join(missing)}")
    names = {value: description.label_name(value) for value in description.foreground_labels}
    points = [n for n in CURVE_POINTS if n <= max_clicks]
    per_case, seconds = [], []
    for case in selection.cases:
        channels, geometry = read_channels(case.image_files)
        reference, _ = read_segmentation(Path(references) / f"{case.case_id}{description.file_ending}")
        # The session takes the file's voxel order, as predict_volume does.
        in_file_order = np.stack([from_canonical(channel, geometry) for channel in channels])
        session = open_session(predictor, in_file_order, geometry.affine_array)
        curves, every_click, clicks, false_positives = {}, {}, {}, {}
        for label, name in names.items():
            tracker = ClickTracker(label)
            curve = class_curve(session, reference, label, max_clicks, geometry.spacing, seconds,
                                description.ignore_label, tracker)
            every_click[name] = [None if math.isnan(v) else v for v in curve]
            curves[name] = {str(n): every_click[name][n] for n in points}
            clicks[name], false_positives[name] = tracker.clicks, tracker.false_positives
        per_case.append({"case_id": case.case_id, "dice": curves, "dice_every_click": every_click,
                         "clicks": clicks, "false_positives": false_positives})
        message(f"{case.case_id}: " + ", ".join(
            f"{name} {_fmt(c[str(points[0])])} -> {_fmt(c[str(points[-1])])}" for name, c in curves.items()))
    mean_every_click = {name: [_mean([_nan(c["dice_every_click"][name][n]) for c in per_case])
                               for n in range(max_clicks + 1)] for name in names.values()}
    mean_over_classes_every_click = [_mean([_nan(curve[n]) for curve in mean_every_click.values()])
                                     for n in range(max_clicks + 1)]
    mean = {name: {str(n): curve[n] for n in points} for name, curve in mean_every_click.items()}
    mean_over_classes = {str(n): mean_over_classes_every_click[n] for n in points}
    return {
        "clicks": points,
        "max_clicks": max_clicks,
        "per_case": per_case,
        "mean": mean,
        "mean_over_classes": mean_over_classes,
        "mean_every_click": {**mean_every_click, "mean_over_classes": mean_over_classes_every_click},
        **compliance_summary(per_case, list(names.values()), mean_every_click, mean_over_classes_every_click),
        "seconds_per_click": {
            "mean": _mean(seconds), "median": float(np.median(seconds)) if seconds else None, "count": len(seconds),
        },
    }


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_curve_table(summary: dict) -> str:
    """The mean Dice curve: one row per class and the mean over classes, one column per click count."""
    points = summary["clicks"]
    header = f"{'class':<16}" + "".join(f"{f'{n} clicks':>11}" for n in points)
    rows = [header]
    for name, curve in [*summary["mean"].items(), ("mean", summary["mean_over_classes"])]:
        rows.append(f"{name:<16}" + "".join(f"{_fmt(curve[str(n)]):>11}" for n in points))
    if "clicks_respected" in summary:  # summaries written before the compliance figures have none
        rows.append(format_compliance(summary))
    timing = summary["seconds_per_click"]
    if timing["count"]:
        rows.append(f"seconds per click: mean {timing['mean']:.3f}, median {timing['median']:.3f} "
                    f"({timing['count']} clicks)")
    return "\n".join(rows)


def save_curve_png(summary: dict, path: str | Path) -> None:
    """The mean Dice curves (per class, and the mean) against the number of clicks, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    points = summary["clicks"]
    for name, curve in [*summary["mean"].items(), ("mean", summary["mean_over_classes"])]:
        values = [np.nan if curve[str(n)] is None else curve[str(n)] for n in points]
        axes.plot(points, values, marker="o", linewidth=2.5 if name == "mean" else 1.2, label=name)
    axes.set_xlabel("simulated clicks per class")
    axes.set_ylabel("Dice")
    axes.set_xticks(points)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def write_summary(summary: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """``interactive_summary.json`` and ``interactive_curve.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output_dir / "interactive_summary.json", output_dir / "interactive_curve.png"
    write_json_atomic(json_path, summary)
    save_curve_png(summary, png_path)
    return json_path, png_path
