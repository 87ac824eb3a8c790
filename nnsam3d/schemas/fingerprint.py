"""The dataset fingerprint: what the planner needs to know about a dataset, as typed JSON.

Written to ``$nnSAM3D_preprocessed/DatasetXXX_Name/dataset_fingerprint.json`` by
``nnsam3d_plan_and_preprocess``; the planner reads it back through :class:`DatasetFingerprint`.
All per-case geometry is in canonical (z, y, x) order (see ``nnsam3d.io.geometry``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.io.schema_version import require_schema_version

FINGERPRINT_SCHEMA_VERSION = 1
FINGERPRINT_FILENAME = "dataset_fingerprint.json"


@dataclass
class IntensityStatistics:
    """Foreground intensity statistics of one channel, from a bounded sample of voxels."""

    mean: float
    std: float
    median: float
    percentile_00_5: float
    percentile_99_5: float
    min: float
    max: float


@dataclass
class ClassStatistics:
    """How much of one label there is.

    voxel_counts: voxels of this class per case (0 where absent), in case order.
    volumes_mm3: the same in mm³.
    cases_present: number of cases containing the class.
    """

    label: int
    name: str
    voxel_counts: list[int]
    volumes_mm3: list[float]
    cases_present: int


@dataclass
class DatasetFingerprint:
    """Per-case spacings and shapes, per-channel intensity statistics, per-class sizes.

    spacings: mm (z, y, x) per case.
    shapes_before_cropping / shapes_after_cropping: voxels (z, y, x) per case; cropping is to
        the bounding box of non-zero voxels of all channels.
    intensity_statistics: channel index (as str) → statistics over foreground voxels.
    class_statistics: label value (as str) → statistics (foreground labels only).
    """

    dataset_name: str
    case_ids: list[str]
    spacings: list[tuple[float, float, float]]
    shapes_before_cropping: list[tuple[int, int, int]]
    shapes_after_cropping: list[tuple[int, int, int]]
    modalities: dict[str, str]
    intensity_statistics: dict[str, IntensityStatistics]
    class_statistics: dict[str, ClassStatistics] = field(default_factory=dict)
    schema_version: int = FINGERPRINT_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "dataset_name": self.dataset_name,
            "case_ids": list(self.case_ids),
            "spacings": [list(s) for s in self.spacings],
            "shapes_before_cropping": [list(s) for s in self.shapes_before_cropping],
            "shapes_after_cropping": [list(s) for s in self.shapes_after_cropping],
            "modalities": dict(self.modalities),
            "intensity_statistics": {k: asdict(v) for k, v in self.intensity_statistics.items()},
            "class_statistics": {k: asdict(v) for k, v in self.class_statistics.items()},
        }

    @classmethod
    def from_json(cls, content: dict, source: str = "fingerprint") -> "DatasetFingerprint":
        """Parse the content of ``dataset_fingerprint.json``; anything malformed raises ValueError
        naming ``source``."""
        if not isinstance(content, dict):
            raise ValueError(f"{source}: malformed fingerprint (a JSON object was expected).")
        version = require_schema_version(content, FINGERPRINT_SCHEMA_VERSION, what="fingerprint", source=source,
                                         advice="Rerun nnsam3d_plan_and_preprocess with --clean.")
        try:
            return cls(
                dataset_name=content["dataset_name"],
                case_ids=list(content["case_ids"]),
                spacings=[tuple(float(v) for v in s) for s in content["spacings"]],
                shapes_before_cropping=[tuple(int(v) for v in s) for s in content["shapes_before_cropping"]],
                shapes_after_cropping=[tuple(int(v) for v in s) for s in content["shapes_after_cropping"]],
                modalities=dict(content["modalities"]),
                intensity_statistics={
                    k: IntensityStatistics(**v) for k, v in content["intensity_statistics"].items()
                },
                class_statistics={k: ClassStatistics(**v) for k, v in content.get("class_statistics", {}).items()},
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{source}: malformed fingerprint ({type(error).__name__}: {error}).") from error

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetFingerprint":
        path = Path(path)
        return cls.from_json(read_json(path), source=str(path))
