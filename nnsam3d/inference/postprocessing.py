"""Postprocessing of predicted label maps: keep only the largest connected component of a class.

Organs are one connected piece; scattered false-positive islands away from the organ cost
Dice. ``nnsam3d_find_best_configuration`` decides per class, on the cross-validation
predictions, whether removing every component but the largest helps, and writes the decision
to ``postprocessing.json`` in the model folder; ``nnsam3d_predict`` applies it when present.

Components are 26-connected (voxels touching by a face, an edge or a corner belong together),
so that thin diagonal parts of a structure are not cut off. Removed voxels become background.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.io.schema_version import require_schema_version

POSTPROCESSING_FILENAME = "postprocessing.json"
POSTPROCESSING_SCHEMA_VERSION = 1
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass
class PostprocessingRules:
    """What to do to a predicted label map after export.

    keep_largest_component: label values for which only the largest 26-connected component is
        kept (the rest becomes background).
    evidence: free-form record of why (per-class Dice with and without, which predictions),
        written by ``nnsam3d_find_best_configuration``; not used to predict.
    """

    keep_largest_component: tuple[int, ...] = ()
    evidence: dict = field(default_factory=dict)
    schema_version: int = POSTPROCESSING_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.keep_largest_component = tuple(sorted(int(v) for v in self.keep_largest_component))
        if any(v <= 0 for v in self.keep_largest_component):
            raise ValueError(f"keep_largest_component lists foreground labels (> 0), got {self.keep_largest_component}")

    @property
    def is_identity(self) -> bool:
        return not self.keep_largest_component

    def describe(self, label_names: dict[int, str] | None = None) -> str:
        if self.is_identity:
            return "no postprocessing"
        names = [label_names.get(v, str(v)) if label_names else str(v) for v in self.keep_largest_component]
        return "keep the largest connected component of " + ", ".join(names)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "keep_largest_component": list(self.keep_largest_component),
            "evidence": self.evidence,
        }

    @classmethod
    def from_json(cls, content: dict, source: str = POSTPROCESSING_FILENAME) -> "PostprocessingRules":
        version = require_schema_version(content, POSTPROCESSING_SCHEMA_VERSION, what="postprocessing", source=source,
                                         advice="Rerun nnsam3d_find_best_configuration.")
        try:
            return cls(
                keep_largest_component=tuple(content["keep_largest_component"]),
                evidence=dict(content.get("evidence", {})),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: malformed postprocessing file ({error}).") from error

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PostprocessingRules":
        return cls.from_json(read_json(path), source=str(path))


def load_postprocessing_if_present(folder: str | os.PathLike) -> PostprocessingRules | None:
    """``folder/postprocessing.json`` when it exists, else None."""
    path = Path(folder) / POSTPROCESSING_FILENAME
    return PostprocessingRules.load(path) if path.is_file() else None


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean (z, y, x) mask (empty stays empty).

    Ties between equally large components go to the first in raster order.
    """
    mask = np.asarray(mask, dtype=bool)
    result = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return result
    # Label inside the mask's bounding box only: cheap on a large image with a small structure.
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    components, count = ndimage.label(mask[box], structure=_FULL_CONNECTIVITY)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        result[box] = components == int(np.argmax(sizes))
    else:
        result[box] = mask[box]
    return result


def keep_largest_component(label_map: np.ndarray, label: int) -> np.ndarray:
    """Copy of ``label_map`` where voxels of ``label`` outside its largest component are background."""
    mask = label_map == label
    result = label_map.copy()
    result[mask & ~largest_component(mask)] = 0
    return result


def apply_postprocessing(label_map: np.ndarray, rules: PostprocessingRules | None) -> np.ndarray:
    """Apply ``rules`` to an integer label map (any axis order); None or empty rules return it unchanged."""
    if rules is None:
        return label_map
    for label in rules.keep_largest_component:
        label_map = keep_largest_component(label_map, label)
    return label_map
