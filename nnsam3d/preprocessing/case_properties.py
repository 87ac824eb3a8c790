"""Per-case record of what preprocessing did, so that a prediction can be put back exactly.

Preprocessing goes: file grid → canonical (z, y, x) → crop to the non-zero box → resample to
the target spacing. The properties hold each step's shape and the crop box; export walks the
steps backwards (resample to ``shape_after_cropping``, paste into ``crop_bbox`` inside
``shape_before_cropping``, undo the canonical reorientation with ``geometry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.schema_version import require_schema_version

CASE_PROPERTIES_SCHEMA_VERSION = 1


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass
class CaseProperties:
    """Geometry bookkeeping of one preprocessed case.

    geometry: the input files' grid (shape, affine, qform/sform codes).
    original_spacing: mm along canonical (z, y, x) before resampling.
    shape_before_cropping: canonical shape (z, y, x) of the full image.
    crop_bbox: half-open voxel ranges ((z0, z1), (y0, y1), (x0, x1)) of the non-zero box.
    shape_after_cropping: canonical shape inside the box (original spacing).
    spacing_after_resampling, shape_after_resampling: the grid the network sees.
    foreground_classes: label values present in the case (empty when no label was given).
    """

    case_id: str
    geometry: ImageGeometry
    original_spacing: tuple[float, float, float]
    shape_before_cropping: tuple[int, int, int]
    crop_bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    shape_after_cropping: tuple[int, int, int]
    spacing_after_resampling: tuple[float, float, float]
    shape_after_resampling: tuple[int, int, int]
    foreground_classes: tuple[int, ...] = field(default_factory=tuple)
    schema_version: int = CASE_PROPERTIES_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.original_spacing = _floats(self.original_spacing)
        self.shape_before_cropping = _ints(self.shape_before_cropping)
        self.crop_bbox = tuple(_ints(pair) for pair in self.crop_bbox)
        self.shape_after_cropping = _ints(self.shape_after_cropping)
        self.spacing_after_resampling = _floats(self.spacing_after_resampling)
        self.shape_after_resampling = _ints(self.shape_after_resampling)
        self.foreground_classes = _ints(self.foreground_classes)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "case_id": self.case_id,
            "geometry": self.geometry.to_json(),
            "original_spacing": list(self.original_spacing),
            "shape_before_cropping": list(self.shape_before_cropping),
            "crop_bbox": [list(pair) for pair in self.crop_bbox],
            "shape_after_cropping": list(self.shape_after_cropping),
            "spacing_after_resampling": list(self.spacing_after_resampling),
            "shape_after_resampling": list(self.shape_after_resampling),
            "foreground_classes": list(self.foreground_classes),
        }

    @classmethod
    def from_json(cls, content: dict) -> "CaseProperties":
        version = require_schema_version(content, CASE_PROPERTIES_SCHEMA_VERSION, what="case properties",
                                         source=f"case '{content.get('case_id')}'",
                                         advice="Rerun nnsam3d_plan_and_preprocess with --clean.")
        return cls(
            case_id=content["case_id"],
            geometry=ImageGeometry.from_json(content["geometry"]),
            original_spacing=content["original_spacing"],
            shape_before_cropping=content["shape_before_cropping"],
            crop_bbox=content["crop_bbox"],
            shape_after_cropping=content["shape_after_cropping"],
            spacing_after_resampling=content["spacing_after_resampling"],
            shape_after_resampling=content["shape_after_resampling"],
            foreground_classes=content.get("foreground_classes", ()),
            schema_version=version,
        )
