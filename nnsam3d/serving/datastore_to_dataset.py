"""The datastore's saved labels (tag ``final``: the corrected ones) → an nnU-Net raw dataset.

``DATASET/imagesTr/ID_0000.nii.gz``, ``labelsTr/ID.nii.gz`` and ``dataset.json`` with the served
model's classes and channel (recorded in the datastore's index by the server), ready for
``nnsam3d_plan_and_preprocess``. Every file is converted to the dataset's file ending and written
atomically. Label values are the model's; a label saved by 3D Slicer with ``label_info`` (the
names of the segments it exported, in the order of their values) is mapped by name onto them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnsam3d.io.atomic import write_json_atomic
from nnsam3d.io.image_io import read_volume_in_file_order, write_volume_in_file_order
from nnsam3d.serving.datastore import FINAL_TAG, Datastore
from nnsam3d.serving.errors import ServingError


class DatastoreConversionError(ValueError):
    """The datastore cannot become a dataset; the message names the image and the problem."""


def datastore_to_dataset(datastore_dir: str | os.PathLike, dataset_dir: str | os.PathLike, tag: str = FINAL_TAG,
                         file_ending: str = ".nii.gz", labels: dict[str, int] | None = None,
                         channel_names: dict[str, str] | None = None) -> list[str]:
    """Write the raw dataset ``dataset_dir`` (created) from the labels tagged ``tag``; returns the
    case ids. labels / channel_names: dataset.json's (default: those the server recorded)."""
    if not (Path(datastore_dir) / "datastore.json").is_file():
        raise DatastoreConversionError(f"{datastore_dir}: no datastore.json; is this the folder nnsam3d_serve "
                                       "--datastore wrote?")
    datastore = Datastore(datastore_dir)
    recorded = datastore.model_classes() or {}
    labels = labels or recorded.get("labels")
    channel_names = channel_names or recorded.get("channel_names") or {"0": "CT"}
    if not labels:
        raise DatastoreConversionError(f"{datastore_dir}: the index records no label names (no server has served "
                                       "it yet); give them")
    if len(channel_names) != 1:
        raise DatastoreConversionError("the datastore holds single-channel images; the model has "
                                       f"{len(channel_names)} channels")
    dataset_dir = Path(dataset_dir)
    cases = []
    for image_id in datastore.image_ids():
        try:
            label_file = datastore.label_path(image_id, tag)
        except ServingError:
            continue  # no saved label of this tag: not a training case
        image, geometry = read_volume_in_file_order(datastore.image_path(image_id))
        label_map, label_geometry = read_volume_in_file_order(label_file)
        if label_geometry.shape != geometry.shape or not np.allclose(label_geometry.affine_array, geometry.affine_array,
                                                                     atol=1e-3):
            raise DatastoreConversionError(f"{label_file}: its grid differs from its image's")
        label_map = _model_values(label_map, datastore.label_info(image_id, tag), labels, label_file)
        write_volume_in_file_order(image, geometry, dataset_dir / "imagesTr" / f"{image_id}_0000{file_ending}")
        write_volume_in_file_order(label_map.astype(np.uint8), geometry, dataset_dir / "labelsTr" / f"{image_id}{file_ending}")
        cases.append(image_id)
    if not cases:
        raise DatastoreConversionError(f"{datastore_dir}: no image has a label tagged {tag!r}; save corrected labels "
                                       "first (Slicer's 'Submit Label', PUT /datastore/label)")
    write_json_atomic(dataset_dir / "dataset.json", {
        "channel_names": channel_names, "labels": labels, "numTraining": len(cases), "file_ending": file_ending,
        "name": dataset_dir.name, "description": f"corrected labels of the nnsam3d datastore {Path(datastore_dir).resolve()}",
    })
    return cases


def _model_values(label_map: np.ndarray, info: dict, labels: dict[str, int], label_file: Path) -> np.ndarray:
    """The label map in the model's values. 3D Slicer's MONAILabel extension saves the segments
    it exports with ``label_info`` (``[{"name", "idx"}, ...]``, in export order) and writes them
    as values 1, 2, ... in that order (its ``idx`` counts skipped segments too, so the order is
    what holds): such a map is remapped by segment name. Any other map is checked as it is."""
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    segments = params.get("label_info")
    values = label_map.astype(np.int64)
    if isinstance(segments, list) and segments:
        mapped = np.zeros_like(values)
        for position, segment in enumerate(segments, start=1):
            name = segment.get("name") if isinstance(segment, dict) else None
            if name not in labels:
                raise DatastoreConversionError(f"{label_file}: segment {name!r} is not a class of the model "
                                               f"({', '.join(labels)}); rename it in the viewer and save again")
            mapped[values == position] = labels[name]
        beyond = values > len(segments)
        if beyond.any():
            raise DatastoreConversionError(f"{label_file}: values up to {int(values.max())} but label_info names "
                                           f"{len(segments)} segments")
        values = mapped
    unknown = sorted(set(np.unique(values).tolist()) - set(labels.values()))
    if unknown:
        raise DatastoreConversionError(f"{label_file}: label values {unknown} are not classes of the model "
                                       f"({labels})")
    return values
