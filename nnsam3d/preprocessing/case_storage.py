"""On-disk storage of preprocessed cases, readable patch by patch.

One folder per plans (``$nnSAM3D_preprocessed/DatasetXXX_Name/<plans.data_identifier>/``)
holds per case:

* ``CASE.npy``       float32 (C, z, y, x) normalised, resampled image
* ``CASE_seg.npy``   int16 (1, z, y, x) label map (training cases only)
* ``CASE_fg.npz``    sampled foreground voxel coordinates per class, ``class_<k>`` → (N, 3) int32
* ``CASE.json``      :class:`CaseProperties`

Arrays are plain ``.npy`` so that the data loader memory-maps them and reads a patch without
loading the volume. The properties file is written last and marks the case complete, so an
interrupted run is resumed by skipping cases whose ``CASE.json`` exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from nnsam3d.io.atomic import read_json, save_npy_atomic, save_npz_atomic, write_json_atomic
from nnsam3d.preprocessing.case_properties import CaseProperties


class PreprocessedCaseStore:
    """Read and write preprocessed cases in one data folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, case_id: str, suffix: str) -> Path:
        return self.folder / f"{case_id}{suffix}"

    def case_ids(self) -> list[str]:
        """Identifiers of the complete cases, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in self.folder.iterdir()
            if p.name.endswith(".json") and not p.name.startswith(".")
        )

    def is_complete(self, case_id: str) -> bool:
        return self._path(case_id, ".json").is_file()

    def write_case(
        self,
        case_id: str,
        data: np.ndarray,
        segmentation: np.ndarray | None,
        properties: CaseProperties,
        class_locations: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Write a case; the properties go last so that a partial case never looks complete."""
        if data.ndim != 4:
            raise ValueError(f"data must be (C, z, y, x), got shape {data.shape}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path(case_id, ".json").unlink(missing_ok=True)
        save_npy_atomic(self._path(case_id, ".npy"), np.ascontiguousarray(data, dtype=np.float32))
        if segmentation is not None:
            if segmentation.ndim == 3:
                segmentation = segmentation[None]
            save_npy_atomic(self._path(case_id, "_seg.npy"), np.ascontiguousarray(segmentation, dtype=np.int16))
        # Only classes with locations are stored, so a stored class can be drawn from without
        # reading its array first (see ClassLocations).
        locations = {
            f"class_{int(k)}": np.asarray(v, dtype=np.int32).reshape(-1, 3)
            for k, v in (class_locations or {}).items()
            if len(v)
        }
        save_npz_atomic(self._path(case_id, "_fg.npz"), **locations)
        write_json_atomic(self._path(case_id, ".json"), properties.to_json())

    def load_data(self, case_id: str, mmap: bool = True) -> np.ndarray:
        """(C, z, y, x) float32; memory-mapped unless ``mmap`` is False."""
        return np.load(self._path(case_id, ".npy"), mmap_mode="r" if mmap else None)

    def load_segmentation(self, case_id: str, mmap: bool = True) -> np.ndarray:
        """(1, z, y, x) int16."""
        path = self._path(case_id, "_seg.npy")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no label map stored for case '{case_id}'.")
        return np.load(path, mmap_mode="r" if mmap else None)

    def load_properties(self, case_id: str) -> CaseProperties:
        return CaseProperties.from_json(read_json(self._path(case_id, ".json")))

    def load_class_locations(self, case_id: str) -> "ClassLocations":
        """Label value → (N, 3) int32 voxel coordinates (z, y, x) sampled from that class (N ≥ 1)."""
        return ClassLocations(self._path(case_id, "_fg.npz"))

    def remove_case(self, case_id: str) -> None:
        for suffix in (".json", ".npy", "_seg.npy", "_fg.npz"):
            self._path(case_id, suffix).unlink(missing_ok=True)


class ClassLocations(Mapping[int, np.ndarray]):
    """The foreground locations of one case, read class by class.

    The labels come from the archive's index; a class's coordinates are decompressed only when
    that class is read. A foreground patch needs one class, and decompressing all of them (up to
    13+ organs of thousands of coordinates) for every patch would slow the data loader.
    """

    def __init__(self, path: Path):
        self._path = path
        self._names: dict[int, str] = {}
        if path.is_file():
            with np.load(path) as archive:
                self._names = {int(name.split("_", 1)[1]): name for name in archive.files}

    def __getitem__(self, label: int) -> np.ndarray:
        with np.load(self._path) as archive:
            return archive[self._names[label]]

    def __iter__(self) -> Iterator[int]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
