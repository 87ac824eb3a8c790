"""DICOM image series as prediction input, read with SimpleITK (GDCM).

A folder holds one or several series; files are grouped by SeriesInstanceUID and each group is
checked before any voxel is read, so that a broken series is named with what is wrong instead
of being read into a silently distorted volume:

* every file an image (not a SEG, RTSTRUCT, SR, ... object) with a readable header;
* one orientation (ImageOrientationPatient) and one slice size for the whole series;
* slices ordered by their position along the slice normal, evenly spaced: a gap of about two
  spacings or more is reported as missing slices, other unevenness as uneven spacing, two files
  at one position as duplicates, slices shifted sideways (e.g. gantry tilt) as not stacked.

The voxel array is then indexed (i, j, k) = (column, row, slice in sorted order), with the
geometry from ITK's origin, spacing and direction (``io.simpleitk_io``), so a DICOM-SEG frame k
corresponds to the k-th file of :attr:`DicomSeries.files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnsam3d.io.geometry import ImageGeometry, ImageReadError
from nnsam3d.io.simpleitk_io import array_from_sitk, geometry_from_sitk

NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
"""Modalities of DICOM objects that are not image slices."""

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference of direction cosines between slices of one series."""

SPACING_RELATIVE_TOLERANCE = 0.01
"""Slice gaps may differ from the median gap by this fraction (rounding of positions in headers)."""

MISSING_SLICE_FACTOR = 1.5
"""A gap this many median gaps or more means slices are missing."""

_TAGS = {
    "series_uid": "0020|000e",
    "series_number": "0020|0011",
    "series_description": "0008|103e",
    "modality": "0008|0060",
    "position": "0020|0032",
    "orientation": "0020|0037",
    "rows": "0028|0010",
    "columns": "0028|0011",
    "instance_number": "0020|0013",
    "frames": "0028|0008",
}


class DicomSeriesError(ImageReadError):
    """A DICOM series that cannot be read as one volume; the message names the series and the problem."""


@dataclass(frozen=True)
class DicomSeries:
    """One image series: its folder, SeriesInstanceUID and slice files sorted along the slice normal.

    Stands where a channel file stands (``RawCase.image_files``); ``os.fspath`` gives the folder.
    """

    folder: Path
    series_uid: str
    files: tuple[Path, ...]
    series_number: str = ""
    description: str = ""

    def __fspath__(self) -> str:
        return str(self.folder)

    @property
    def name(self) -> str:
        return self.folder.name

    def __str__(self) -> str:
        return f"{self.folder} (DICOM series {self.series_uid})"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def dicom_files_in(folder: Path) -> list[Path]:
    return [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)]


def _header(path: Path) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        return {"unreadable": str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"}
    return {key: reader.GetMetaData(tag).strip() for key, tag in _TAGS.items() if reader.HasMetaDataKey(tag)}


def _vector(text: str, size: int, path: Path, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        values = np.array([])
    if values.shape != (size,):
        raise DicomSeriesError(f"{path}: {what} '{text}' is not {size} numbers.")
    return values


def positions_along_normal(orientation, positions) -> tuple[np.ndarray, np.ndarray]:
    """(the slice normal, each slice's position along it in mm) from ImageOrientationPatient
    (6 numbers: row and column directions) and ImagePositionPatient of every slice (n, 3)."""
    orientation = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return normal, np.asarray(positions, dtype=np.float64) @ normal


def _sorted_slices(series_uid: str, files: list[Path], headers: list[dict], folder: Path) -> list[Path]:
    """The files sorted along the slice normal, after every check of the module docstring."""
    label = f"{folder} (DICOM series {series_uid})"
    modalities = {h.get("modality", "") for h in headers}
    if modalities & NON_IMAGE_MODALITIES:
        raise DicomSeriesError(
            f"{label}: not an image series (modality {', '.join(sorted(modalities))}); "
            f"nnsam3d predicts from CT/MR image series. Remove it or point -i at the image series."
        )
    missing = [f.name for f, h in zip(files, headers) if "position" not in h or "orientation" not in h]
    if missing:
        raise DicomSeriesError(
            f"{label}: {len(missing)} file(s) without ImagePositionPatient/ImageOrientationPatient "
            f"(e.g. {missing[0]}); not a cross-sectional image series."
        )
    orientations = [_vector(h["orientation"], 6, f, "ImageOrientationPatient") for f, h in zip(files, headers)]
    for path, orientation in zip(files, orientations):
        if np.abs(orientation - orientations[0]).max() > ORIENTATION_TOLERANCE:
            raise DicomSeriesError(
                f"{label}: mixed orientations: {files[0].name} has ImageOrientationPatient "
                f"{headers[0]['orientation']} but {path.name} has {headers[files.index(path)]['orientation']}. "
                f"Split the series (e.g. localisers) or reconstruct one stack."
            )
    sizes = {(h.get("rows"), h.get("columns")) for h in headers}
    if len(sizes) > 1:
        raise DicomSeriesError(f"{label}: slices of different sizes (rows, columns) {sorted(sizes)}.")
    if len(files) == 1:
        frames = int(float(headers[0].get("frames", "1") or 1))
        if frames > 1:
            # Read as a series it comes out 4D, and a legacy multi-frame file without
            # SpacingBetweenSlices gets a made-up slice spacing: refused before anything is predicted.
            raise DicomSeriesError(
                f"{label}: one multi-frame DICOM file ({files[0].name}, {frames} frames); nnsam3d reads series "
                f"of single-frame slices (and writes DICOM-SEG for those). Convert it to single-frame slices "
                f"or to an image file such as .nii.gz (e.g. with dcm2niix) and predict that."
            )
        raise DicomSeriesError(f"{label}: a single slice ({files[0].name}); a 3D volume needs a stack of slices.")

    positions = np.stack([_vector(h["position"], 3, f, "ImagePositionPatient") for f, h in zip(files, headers)])
    normal, along = positions_along_normal(orientations[0], positions)
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    step = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        if gap <= SPACING_RELATIVE_TOLERANCE * max(step, 1e-6):
            raise DicomSeriesError(
                f"{label}: {files[index].name} and {files[index + 1].name} lie at the same position "
                f"({along[index]:.3f} mm along the slice normal): duplicate slices or several acquisitions in one series."
            )
    for index, gap in enumerate(gaps):
        if gap >= MISSING_SLICE_FACTOR * step:
            raise DicomSeriesError(
                f"{label}: missing slice(s): {gap:.3f} mm between {files[index].name} and "
                f"{files[index + 1].name} where the slice spacing is {step:.3f} mm "
                f"(about {round(gap / step) - 1} slice(s) missing)."
            )
    if np.abs(gaps - step).max() > SPACING_RELATIVE_TOLERANCE * step:
        raise DicomSeriesError(
            f"{label}: uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"(more than {SPACING_RELATIVE_TOLERANCE:.0%} apart); resample the series to even spacing first."
        )
    sideways = positions - positions[0] - np.outer(along - along[0], normal)
    if np.abs(sideways).max() > SPACING_RELATIVE_TOLERANCE * step + 1e-3:
        raise DicomSeriesError(
            f"{label}: slices are shifted sideways by up to {np.abs(sideways).max():.3f} mm along the "
            f"stack (gantry tilt?); the volume would be sheared. Correct the tilt first."
        )
    return files


def find_dicom_series(folder: str | os.PathLike) -> tuple[list[DicomSeries], dict[str, str]]:
    """The image series of the DICOM files directly in ``folder``.

    Returns the series that pass every check (sorted by series number, then UID) and, for
    the others, SeriesInstanceUID (or file name) → message naming the problem.
    """
    folder = Path(folder)
    by_series: dict[str, list[tuple[Path, dict]]] = {}
    problems: dict[str, str] = {}
    for path in dicom_files_in(folder):
        header = _header(path)
        if "unreadable" in header or "series_uid" not in header:
            problems[path.name] = (
                f"{path}: not a DICOM image SimpleITK can read "
                f"({header.get('unreadable', 'no SeriesInstanceUID')}); not an image series."
            )
            continue
        by_series.setdefault(header["series_uid"], []).append((path, header))
    series = []
    for uid, members in by_series.items():
        files, headers = [m[0] for m in members], [m[1] for m in members]
        try:
            ordered = _sorted_slices(uid, files, headers, folder)
        except DicomSeriesError as error:
            problems[uid] = str(error)
            continue
        series.append(DicomSeries(folder, uid, tuple(ordered), headers[0].get("series_number", ""),
                                  headers[0].get("series_description", "")))
    series.sort(key=lambda s: (int(s.series_number) if s.series_number.isdigit() else 1 << 30, s.series_uid))
    return series, problems


def read_dicom_series(series: DicomSeries) -> tuple[np.ndarray, ImageGeometry]:
    """(float32 voxels (i, j, k) = (column, row, slice in ``series.files`` order), geometry), in
    the stored units after RescaleSlope/Intercept (Hounsfield units for CT)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DicomSeriesError(f"{series}: cannot be read by SimpleITK ({reason}).") from error
    return array_from_sitk(image, series), geometry_from_sitk(image)
