"""MONAI Label's infer ``params`` → the clicks of a live session.

MONAI Label's interactive requests are stateless: every request carries *all* the points placed
so far, as voxel indices (i, j, k) of the image file. Two forms arrive:

* deepgrow form (MONAI Label's Python client, Slicer with a ``deepgrow`` model):
  ``{"label": NAME, "foreground": [[i, j, k], ...], "background": [[i, j, k], ...]}``: positive
  and negative clicks of class NAME;
* DeepEdit multi-label form (Slicer with a ``deepedit`` model): ``{"label": NAME, NAME_1: [...],
  NAME_2: [...], "background": [...]}``: each class's positive clicks under its name, and the
  points of the "background" segment; a background point is a negative click of the class being
  edited (``label``), or, while "background" itself is edited, of the class the segmentation
  shows at that point (none if background), decided when the point is first seen.

The session is stateful, so the server keeps, per class, the point lists it applied and
compares: when the request's lists extend them, only the new points are clicked (decoder passes
for the new clicks only); otherwise the class is reset and its points replayed. A class whose
lists are now empty is reset to the starting segmentation.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field

import numpy as np

from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.serving.errors import ServingError
from nnsam3d.serving.live_sessions import LiveImage

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
MAX_POINTS = 10_000


@dataclass
class InferParams:
    """What the server reads of an infer request's ``params`` (the rest is echoed back or ignored)."""

    label: str | None = None
    foreground: list[tuple[int, int, int]] | None = None   # deepgrow form
    background: list[tuple[int, int, int]] = field(default_factory=list)
    per_label: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # multi-label form
    result_extension: str = ".nii.gz"
    result_dtype: str = "uint8"
    reset_state: bool = False

    @property
    def has_points(self) -> bool:
        return bool(self.foreground or self.background or any(self.per_label.values()))


def parse_params(text: str | None, label_names: dict[str, int]) -> InferParams:
    """``params`` (a JSON object as text) → :class:`InferParams`; a 400 error naming what is wrong.

    label_names: the model's classes, name → value (background included)."""
    if text is None or text == "":
        content = {}
    else:
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise ServingError(f"params is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(content, dict):
        raise ServingError(f"params must be a JSON object, got {type(content).__name__}")
    params = InferParams()
    extension = content.get("result_extension", ".nii.gz") or ".nii.gz"
    if extension not in RESULT_EXTENSIONS:
        raise ServingError(f"result_extension {extension!r} is not supported; use one of {', '.join(RESULT_EXTENSIONS)}")
    params.result_extension = extension
    dtype = content.get("result_dtype", "uint8") or "uint8"
    if dtype not in RESULT_DTYPES:
        raise ServingError(f"result_dtype {dtype!r} is not supported; use one of {', '.join(RESULT_DTYPES)}")
    params.result_dtype = dtype
    params.reset_state = bool(content.get("reset_state", False))
    label = content.get("label")
    if label is not None:
        if not isinstance(label, str) or label not in label_names:
            raise ServingError(f"unknown label {label!r}; this model segments: {', '.join(label_names)}")
        params.label = label
    if "foreground" in content:
        params.foreground = _points(content["foreground"], "foreground")
        params.background = _points(content.get("background", []), "background")
        if (params.foreground or params.background) and (params.label is None or label_names[params.label] == 0):
            raise ServingError("foreground/background points need a 'label' naming the class they are for "
                               f"(one of {', '.join(n for n, v in label_names.items() if v)})")
    else:
        params.background = _points(content.get("background", []), "background")
        for name, value in label_names.items():
            if value and name in content:
                params.per_label[name] = _points(content[name], name)
        if params.background and params.label is None:
            raise ServingError("background points need a 'label' naming the class being edited")
    return params


def _points(value, key: str) -> list[tuple[int, int, int]]:
    if not isinstance(value, list):
        raise ServingError(f"params[{key!r}] must be a list of [i, j, k] voxel points, got {type(value).__name__}")
    if len(value) > MAX_POINTS:
        raise ServingError(f"params[{key!r}] holds {len(value)} points; at most {MAX_POINTS} are accepted")
    points = []
    for point in value:
        if (not isinstance(point, (list, tuple)) or len(point) != 3
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) for v in point)):
            raise ServingError(f"params[{key!r}]: {point!r} is not a voxel point [i, j, k] of three numbers")
        points.append(tuple(int(round(float(v))) for v in point))
    return points


def check_points_inside(params: InferParams, shape: tuple[int, ...]) -> None:
    """Every point lies on the image grid (``shape``, file order), else a 400 error naming it."""
    lists = [("foreground", params.foreground or []), ("background", params.background),
             *params.per_label.items()]
    for key, points in lists:
        for point in points:
            if any(v < 0 or v >= n for v, n in zip(point, shape)):
                raise ServingError(f"params[{key!r}]: point {list(point)} lies outside the image of shape {list(shape)}")


def wanted_clicks(params: InferParams, live: LiveImage, label_names: dict[str, int]) -> dict[int, tuple[list, list]]:
    """Class value → (positive points, negative points) the request asks for (classes it does not
    mention are absent)."""
    edited = label_names[params.label] if params.label is not None else None
    if params.foreground is not None:
        if edited is None or edited == 0:
            return {}
        return {edited: (list(params.foreground), list(params.background))}
    wanted = {label_names[name]: (list(points), []) for name, points in params.per_label.items()}
    labels = live.labels
    for point in params.background:
        if point not in live.background_owner:
            live.background_owner[point] = edited if edited else int(labels[point])
        owner = live.background_owner[point]
        if owner:
            wanted.setdefault(owner, (list(live.applied.get(owner, ([], []))[0]), []))[1].append(point)
    return wanted


def sync_clicks(live: LiveImage, wanted: dict[int, tuple[list, list]]) -> int:
    """Bring ``live``'s session to the wanted clicks; returns how many clicks were run."""
    session = live.session
    if session is None:
        raise ServingError("this model takes no clicks (it was trained without a prompt branch)")
    clicks_run = 0
    for value, (positives, negatives) in wanted.items():
        applied_positives, applied_negatives = live.applied.get(value, ([], []))
        extends = (positives[:len(applied_positives)] == applied_positives
                   and negatives[:len(applied_negatives)] == applied_negatives)
        if extends:
            new_positives, new_negatives = positives[len(applied_positives):], negatives[len(applied_negatives):]
        else:
            session.reset(value)
            live.applied[value] = ([], [])
            new_positives, new_negatives = positives, negatives
        try:
            for point in new_positives:
                session.click(voxel=point, positive=True, label=value)
                live.applied.setdefault(value, ([], []))[0].append(point)
                clicks_run += 1
            for point in new_negatives:
                session.click(voxel=point, positive=False, label=value)
                live.applied.setdefault(value, ([], []))[1].append(point)
                clicks_run += 1
        except ClickError as error:
            raise ServingError(str(error)) from None
    return clicks_run


def reset_all(live: LiveImage) -> None:
    """Drop every click (``reset_state``)."""
    if live.session is None:
        return
    for value, (positives, negatives) in list(live.applied.items()):
        if positives or negatives:
            live.session.reset(value)
    live.applied.clear()
    live.background_owner.clear()
