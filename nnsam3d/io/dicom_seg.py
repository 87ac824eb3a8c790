"""Predictions as DICOM Segmentation objects (``--output-format dicom-seg``), with highdicom.

The SEG references every slice of the source series (frame k of the label map is the
segmentation of ``DicomSeries.files[k]``), shares its patient, study and frame of reference,
and has one segment per foreground label of ``dataset.json``, numbered by label value and
named by label name, so viewers (3D Slicer, OHIF, ...) show it over the series.

highdicom and pydicom come with the optional extra ``nnsam3d[dicom]``.
"""

from __future__ import annotations

import os

import numpy as np

from nnsam3d.io.atomic import atomic_path
from nnsam3d.io.dicom_series import DicomSeries, positions_along_normal

DICOM_EXTRA_HINT = "pip install 'nnsam3d[dicom]' (highdicom and pydicom)"


class MissingOptionalDependencyError(ImportError):
    """A feature needs an optional extra that is not installed; the message says which."""


def require_dicom_extra() -> None:
    """Raise :class:`MissingOptionalDependencyError` naming the extra unless highdicom and pydicom import."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as error:
        raise MissingOptionalDependencyError(
            f"--output-format dicom-seg needs the optional extra nnsam3d[dicom], which is not installed "
            f"({error.name} is missing): {DICOM_EXTRA_HINT}."
        ) from error


def _fill_missing_slice_thickness(sources: list) -> None:
    """Give the source headers (in memory only) a Slice Thickness (0018,0050) where theirs is
    missing or empty, as some exports leave it: the SEG's pixel measures need one. The distance
    between neighbouring slices stands in for it; the series was checked to be evenly spaced
    (``io.dicom_series``), so that distance is one number."""
    missing = [source for source in sources if source.get("SliceThickness") in (None, "")]
    if not missing:
        return
    if len(sources) < 2:
        raise ValueError(f"{getattr(sources[0], 'filename', 'the series')}: no Slice Thickness (0018,0050) "
                         f"and a single slice, so none can be derived from the slice spacing.")
    _, along = positions_along_normal([float(v) for v in sources[0].ImageOrientationPatient],
                                      [[float(v) for v in source.ImagePositionPatient] for source in sources])
    spacing = float(np.median(np.abs(np.diff(along))))
    for source in missing:
        source.SliceThickness = round(spacing, 6)


def write_dicom_seg(
    labels: np.ndarray,
    series: DicomSeries,
    label_names: dict[int, str],
    path: str | os.PathLike,
    software_version: str = "",
) -> None:
    """Write a label map as a DICOM Segmentation of ``series``, atomically.

    labels: (i, j, k) = (column, row, slice) integer label map on the series' grid, as
        ``io.image_io.read_volume_in_file_order`` reads the series; 0 is background.
    label_names: label value → name, for every foreground label (segments 1..N).
    """
    require_dicom_extra()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.shape[2] != len(series.files):
        raise ValueError(f"{series}: label map has {labels.shape[2]} slices, the series {len(series.files)}")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series.files]
    _fill_missing_slice_thickness(sources)
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slice, row, column)
    frames = frames.astype(np.uint8 if max(label_names, default=0) < 256 else np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nnsam3d", version=software_version or "unknown", family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name,
            # dataset.json names structures freely; a generic category and type keep the SEG
            # valid, the label carries the meaning.
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value, name in sorted(label_names.items())
    ]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(series.series_number) + 1000 if series.series_number.isdigit() else 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="nnsam3d",
        manufacturer_model_name="nnsam3d 3DMedSAM",
        software_versions=software_version or "unknown",
        device_serial_number="none",
        series_description="nnsam3d segmentation",
        omit_empty_frames=False,
    )
    with atomic_path(path) as temporary:
        segmentation.save_as(str(temporary))
