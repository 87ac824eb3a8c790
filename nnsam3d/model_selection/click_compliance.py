"""Whether a model does what the simulated user's clicks ask, beyond the Dice curve.

A rising Dice curve can hide a model that ignores clicks: the user clicks the same error again
and again while other clicks do the work, or a false positive stays however often it is clicked
away. Three figures make that visible (issue 22, point 9):

* respected clicks: after a positive click the clicked voxel carries the class, after a
  negative one it does not (on the session's label map, at the voxel the simulated user chose);
* false-positive removal: a negative click is aimed at one false-positive component of the
  current segmentation (6-connected, as the simulated user finds it); how many clicks of that
  class, counting the click itself, until none of that component's voxels carries the class
  any more, or never within the click budget. A component clicked again before it is gone
  is the same component, tracked once;
* the largest fall of the mean curve from one click to the next (0 when it never falls).

:class:`ClickTracker` follows one class of one case (``interactive_evaluation.class_curve``);
:func:`compliance_summary` pools the trackers' records over cases and classes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

REMOVAL_WITHIN = (1, 2, 3)
"""Click counts at which the share of clicked-away false positives that are gone is reported."""


class ClickTracker:
    """Records, for the clicks on one class, whether each was respected and how long the false
    positives it aimed at lasted. Call :meth:`before_click` with the label map the click was
    placed on, then :meth:`after_click` with the label map the session returned."""

    def __init__(self, label: int):
        self.label = label
        self.clicks: list[dict] = []
        self.false_positives: list[dict] = []
        self._pending: tuple[tuple[int, ...], bool] | None = None
        self._open: list[tuple[dict, np.ndarray]] = []  # (record, flat voxel indices) not yet gone

    def before_click(self, labels: np.ndarray, reference: np.ndarray, voxel: Sequence[int], positive: bool,
                     annotated: np.ndarray | bool = True) -> None:
        """The simulated user is about to click ``voxel`` (canonical index) on ``labels``."""
        voxel = tuple(int(v) for v in voxel)
        self._pending = (voxel, positive)
        if positive:
            return
        flat = int(np.ravel_multi_index(voxel, labels.shape))
        if any((voxels == flat).any() for _, voxels in self._open):
            return  # the same false positive clicked again: it is already being followed
        false_positive = (labels == self.label) & (reference != self.label) & annotated
        components, _ = ndimage.label(false_positive)
        component = components[voxel]
        if component == 0:
            return  # not on a false positive (cannot happen with error_click's negative clicks)
        voxels = np.flatnonzero(components == component)
        record = {"click": len(self.clicks) + 1, "voxels": int(voxels.size), "gone_after": None, "observed": 0}
        self.false_positives.append(record)
        self._open.append((record, voxels))

    def after_click(self, labels: np.ndarray) -> None:
        """The session answered the pending click with ``labels``."""
        if self._pending is None:
            raise RuntimeError("after_click without before_click")
        voxel, positive = self._pending
        self._pending = None
        carries = bool(labels[voxel] == self.label)
        self.clicks.append({"voxel": list(voxel), "positive": positive, "respected": carries == positive})
        still_open = []
        flat_labels = labels.ravel()
        for record, voxels in self._open:
            record["observed"] += 1
            if (flat_labels[voxels] == self.label).any():
                still_open.append((record, voxels))
            else:
                record["gone_after"] = record["observed"]
        self._open = still_open


def respected_fractions(clicks: list[dict]) -> dict:
    """Share of positive and of negative clicks that were respected, and their counts."""
    result = {}
    for kind, positive in (("positive", True), ("negative", False)):
        chosen = [c["respected"] for c in clicks if c["positive"] == positive]
        result[kind] = float(np.mean(chosen)) if chosen else None
    result["count"] = {kind: sum(1 for c in clicks if c["positive"] == (kind == "positive"))
                       for kind in ("positive", "negative")}
    return result


def removal_fractions(false_positives: list[dict]) -> dict:
    """Of the false positives clicked away: the share gone within 1, 2, 3 clicks, and how many
    never went within the budget. A component whose budget ended before k clicks and that was not
    gone by then does not count for k (the answer is unknown), so late clicks do not look slow."""
    within = {}
    for k in REMOVAL_WITHIN:
        known = [fp for fp in false_positives
                 if (fp["gone_after"] is not None and fp["gone_after"] <= k) or fp["observed"] >= k]
        gone = [fp for fp in known if fp["gone_after"] is not None and fp["gone_after"] <= k]
        within[str(k)] = len(gone) / len(known) if known else None
    return {"tracked": len(false_positives), "removed_within": within,
            "never": sum(1 for fp in false_positives if fp["gone_after"] is None)}


def largest_fall(curve: Sequence[float | None]) -> float | None:
    """The largest drop between consecutive points of ``curve`` (0 if it never drops; None
    entries are skipped pairs); None when no pair has two values."""
    drops = [a - b for a, b in zip(curve, curve[1:])
             if a is not None and b is not None and not math.isnan(a) and not math.isnan(b)]
    return max(0.0, max(drops)) if drops else None


def compliance_summary(per_case: list[dict], class_names: Sequence[str], mean_every_click: dict,
                       mean_over_classes_every_click: Sequence[float | None]) -> dict:
    """The summary's compliance figures from the per-case records (``per_case[i]["clicks"][name]``,
    ``per_case[i]["false_positives"][name]``) and the mean curves at every click count."""
    by_class = {}
    for name in class_names:
        clicks = [c for case in per_case for c in case["clicks"][name]]
        fps = [fp for case in per_case for fp in case["false_positives"][name]]
        by_class[name] = {"clicks_respected": respected_fractions(clicks),
                          "false_positive_removal": removal_fractions(fps),
                          "largest_mean_fall": largest_fall(mean_every_click[name])}
    all_clicks = [c for case in per_case for name in class_names for c in case["clicks"][name]]
    all_fps = [fp for case in per_case for name in class_names for fp in case["false_positives"][name]]
    return {
        "clicks_respected": respected_fractions(all_clicks),
        "false_positive_removal": removal_fractions(all_fps),
        "largest_mean_fall": largest_fall(list(mean_over_classes_every_click)),
        "per_class": by_class,
    }


def format_compliance(compliance: dict) -> str:
    """Three lines: respected clicks, false positives clicked away, the mean curve's largest fall."""
    def share(value):
        return "n/a" if value is None else f"{value:.2f}"

    respected, removal = compliance["clicks_respected"], compliance["false_positive_removal"]
    fall = compliance["largest_mean_fall"]
    within = ", ".join(f"{k} click{'s' if k != '1' else ''} {share(v)}" for k, v in removal["removed_within"].items())
    return "\n".join([
        f"clicks respected: positive {share(respected['positive'])} of {respected['count']['positive']}, "
        f"negative {share(respected['negative'])} of {respected['count']['negative']}",
        f"false positives clicked away: {removal['tracked']}; gone within {within}; never {removal['never']}",
        f"largest fall of the mean curve between consecutive clicks: {'n/a' if fall is None else f'{fall:.4f}'}",
    ])
