"""Export a prediction: class probabilities on the network grid → label map file in the input's geometry.

The network's grid is the case cropped to its non-zero box and resampled to the target
spacing. :mod:`nnsam3d.preprocessing.geometry_restore` walks these steps back (class scores
are resampled class by class and then argmaxed, so memory stays at two volumes), the
postprocessing is applied on the full canonical label map, and ``io.image_io.write_segmentation``
(or another writer, e.g. DICOM-SEG) writes it onto exactly the input file's grid (shape, affine,
orientation, qform/sform codes), atomically.

With ``save_probabilities``, ``CASE.npz`` is written beside the label map:

* ``probabilities``: float16 (K, z, y, x), canonical order (``io.geometry``), on the full
  image's grid (the crop undone, outside the crop box background has probability 1), so that
  predictions of models with different plans can be averaged voxel by voxel;
* ``properties``: the case's :class:`CaseProperties` as a JSON string (the input geometry
  included), so that an ensemble's label map can be written without the input files.

The ``.npz`` is written before the label map: a label map on disk means the case is complete
(``nnsam3d_predict --continue`` relies on that).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nnsam3d.inference.postprocessing import PostprocessingRules, apply_postprocessing
from nnsam3d.io.atomic import save_npz_atomic
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import SUPPORTED_FILE_ENDINGS, write_segmentation
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.geometry_restore import (
    restore_crop_box_labels,
    restore_probabilities,
    restore_scores_to_label_map,
)

DICOM_SEG_ENDING = ".dcm"
IMAGE_FILE_ENDINGS = tuple(sorted((*SUPPORTED_FILE_ENDINGS, DICOM_SEG_ENDING), key=len, reverse=True))
"""Endings of label maps (longest first, so ``.nii.gz`` is recognised before ``.gz``)."""

LabelWriter = Callable[[np.ndarray, ImageGeometry, Path], None]
"""Writes a canonical label map (z, y, x) on a geometry at a path, atomically."""
PROBABILITIES_KEY = "probabilities"
PROPERTIES_KEY = "properties"


def case_name_of(path: str | os.PathLike) -> str:
    """File name without its image ending: ``liver_003.nii.gz`` → ``liver_003``."""
    name = Path(path).name
    for ending in IMAGE_FILE_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def probabilities_file_for(output_file: str | os.PathLike) -> Path:
    """``OUT/CASE.npz`` for the label map ``OUT/CASE.nii.gz``."""
    output_file = Path(output_file)
    return output_file.with_name(case_name_of(output_file) + ".npz")


def probabilities_to_label_map(
    probabilities: np.ndarray, properties: CaseProperties, postprocessing: PostprocessingRules | None = None
) -> np.ndarray:
    """(K, z, y, x) class probabilities on the network grid → canonical label map (z, y, x) int16
    of the full input image, postprocessed."""
    expected = tuple(properties.shape_after_resampling)
    if tuple(probabilities.shape[1:]) != expected:
        raise ValueError(
            f"case '{properties.case_id}': probabilities of shape {probabilities.shape[1:]} do not match "
            f"the preprocessed shape {expected}"
        )
    label_map = restore_scores_to_label_map(probabilities, properties)
    return apply_postprocessing(label_map, postprocessing)


def crop_box_labels_to_label_map(
    labels: np.ndarray, properties: CaseProperties, postprocessing: PostprocessingRules | None = None
) -> np.ndarray:
    """Label map (z, y, x) of the case's crop box at its own spacing (the scores resampled and
    argmaxed where they are, see ``device_argmax``) → canonical label map of the full input
    image, int16, postprocessed."""
    expected = tuple(properties.shape_after_cropping)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"case '{properties.case_id}': a label map of shape {labels.shape} does not match "
            f"the crop box's shape {expected}"
        )
    return apply_postprocessing(restore_crop_box_labels(labels, properties), postprocessing)


def save_probabilities_file(probabilities: np.ndarray, properties: CaseProperties, path: str | os.PathLike) -> None:
    """Write the full-image probabilities (float16, canonical) and the properties as ``.npz``."""
    full = restore_probabilities(probabilities, properties, dtype=np.float16)
    save_npz_atomic(
        path,
        **{PROBABILITIES_KEY: full, PROPERTIES_KEY: np.array(json.dumps(properties.to_json()))},
    )


def load_probabilities_file(path: str | os.PathLike) -> tuple[np.ndarray, CaseProperties]:
    """Read a ``CASE.npz``: (probabilities float16 (K, z, y, x) canonical, full image; properties)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            probabilities = archive[PROBABILITIES_KEY]
            properties = CaseProperties.from_json(json.loads(str(archive[PROPERTIES_KEY])))
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"{path}: not a probabilities file written by nnsam3d ({type(error).__name__}: {error}). "
            f"Predict again with --save-probabilities (or train with --npz)."
        ) from error
    return probabilities, properties


@dataclass
class PredictedCase:
    """What the export needs of a predicted case: where it goes back to, and its probabilities
    (K, z, y, x) on the network grid, or only the label map of its crop box at the case's own
    spacing (z, y, x) when that is all the export needs (``device_argmax``)."""

    properties: CaseProperties
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None

    def label_map(self, postprocessing: PostprocessingRules | None = None) -> np.ndarray:
        """Canonical label map (z, y, x) int16 of the full input image, postprocessed."""
        if self.labels is not None:
            return crop_box_labels_to_label_map(self.labels, self.properties, postprocessing)
        return probabilities_to_label_map(self.probabilities, self.properties, postprocessing)


def export_prediction(
    probabilities: np.ndarray,
    properties: CaseProperties,
    output_file: Path,
    save_probabilities: bool = False,
    postprocessing: PostprocessingRules | None = None,
    write_labels: LabelWriter = write_segmentation,
) -> np.ndarray:
    """Write the label map of one case in the input's original geometry, atomically.

    probabilities: (K, z, y, x) float16/float32 on the network grid
        (``properties.shape_after_resampling``), as ``Predictor.predict_preprocessed`` returns.
    properties: the case's preprocessing record (from the preprocessor or the case store).
    output_file: e.g. ``OUT/CASE.nii.gz``; its folder is created.
    save_probabilities: also write ``OUT/CASE.npz`` (see the module docstring).
    postprocessing: rules applied to the label map (not to the saved probabilities).
    write_labels: the writer (default: ``io.image_io.write_segmentation``, format by the ending).

    Returns the written label map in canonical order (z, y, x), int16.
    """
    return export_case(PredictedCase(properties, probabilities), output_file, save_probabilities, postprocessing,
                       write_labels)


def export_case(
    predicted: PredictedCase,
    output_file: Path,
    save_probabilities: bool = False,
    postprocessing: PostprocessingRules | None = None,
    write_labels: LabelWriter = write_segmentation,
) -> np.ndarray:
    """:func:`export_prediction` of a :class:`PredictedCase` (``save_probabilities`` needs its
    probabilities). Returns the written canonical label map (z, y, x), int16."""
    output_file = Path(output_file)
    if save_probabilities:
        if predicted.probabilities is None:
            raise ValueError(f"case '{predicted.properties.case_id}': no probabilities to save, only labels")
        save_probabilities_file(predicted.probabilities, predicted.properties, probabilities_file_for(output_file))
    label_map = predicted.label_map(postprocessing)
    write_labels(label_map, predicted.properties.geometry, output_file)
    return label_map
