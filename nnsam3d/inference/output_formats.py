"""What predicted label maps are written as: the dataset's format, another image format, or a
DICOM Segmentation of a DICOM input series (``output_format`` of ``Predictor.predict_folder``)."""

from __future__ import annotations

from functools import partial
from typing import Sequence

import nnsam3d
from nnsam3d.inference.case_inputs import CaseInputError, CaseSelection
from nnsam3d.inference.export import DICOM_SEG_ENDING, LabelWriter
from nnsam3d.io.dicom_seg import require_dicom_extra, write_dicom_seg
from nnsam3d.io.dicom_series import DicomSeries
from nnsam3d.io.geometry import from_canonical
from nnsam3d.io.image_io import SUPPORTED_FILE_ENDINGS, ImageIO, write_segmentation
from nnsam3d.io.raw_dataset import DatasetDescription

DICOM_SEG = "dicom-seg"
"""``output_format`` for DICOM Segmentation objects (``CASE.dcm``) of DICOM series inputs."""


def output_ending_for(description: DatasetDescription, output_format: str | None) -> str:
    """The ending of written label maps for ``output_format`` (see ``Predictor.predict_folder``)."""
    if output_format is None:
        return description.file_ending
    if output_format == DICOM_SEG:
        return DICOM_SEG_ENDING
    ending = output_format if output_format.startswith(".") else f".{output_format}"
    if ending not in SUPPORTED_FILE_ENDINGS:
        raise CaseInputError(
            f"output format '{output_format}' is not supported; choose {DICOM_SEG} or one of "
            f"{', '.join(SUPPORTED_FILE_ENDINGS)}."
        )
    return ending


def check_inputs_for_format(selection: CaseSelection, output_format: str | None, input_path) -> None:
    """Refuse, before anything is predicted, a run whose label maps ``output_format`` cannot
    write: DICOM-SEG needs the extra and DICOM series input (:class:`CaseInputError`)."""
    if output_format != DICOM_SEG:
        return
    require_dicom_extra()
    not_dicom = [case.case_id for case in selection.cases if not isinstance(case.image_files[0], DicomSeries)]
    if not_dicom:
        raise CaseInputError(
            f"{input_path}: --output-format {DICOM_SEG} needs DICOM series as input (a DICOM-SEG "
            f"references its source slices); {', '.join(not_dicom[:3])} are image files. Use an image "
            f"format such as .nii.gz for them."
        )


def label_writer_for(
    description: DatasetDescription, image_io: ImageIO, output_format: str | None, image_files: Sequence
) -> LabelWriter:
    """How a case's canonical label map is written: DICOM-SEG referencing the case's series, or an
    image file (with the dataset's reader/writer ``image_io`` when the ending is the dataset's)."""
    if output_format == DICOM_SEG:
        series = image_files[0]
        if not isinstance(series, DicomSeries):
            raise CaseInputError(f"{series}: --output-format {DICOM_SEG} needs a DICOM series as input.")
        names = {value: name for name, value in description.labels.items() if value != 0}
        return lambda labels, geometry, path: write_dicom_seg(
            from_canonical(labels, geometry), series, names, path, software_version=nnsam3d.__version__
        )
    same_format = output_ending_for(description, output_format) == description.file_ending
    return partial(write_segmentation, image_io=image_io if same_format else None)
