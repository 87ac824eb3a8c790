"""Which cases to predict: the input folder (or single case), ``--num-parts``, ``--continue``.

Input cases follow the dataset's naming: one file per channel, ``CASE_XXXX<file_ending>``
(``XXXX`` = channel index). ``-i`` may name a folder of such files or one channel file of a
single case; for a one-channel dataset any single image file is accepted as a case.

A folder without such files but with DICOM files, directly or one level down, is read as DICOM
series (one-channel models): every folder holding DICOM files is split by SeriesInstanceUID; a
folder with one series is the case named after the folder, a folder with several gives
``FOLDER_<SeriesNumber>`` (or ``FOLDER_<SeriesInstanceUID>`` when numbers repeat). Series that
fail the checks of ``io.dicom_series`` (missing slices, uneven spacing, mixed orientations,
non-image objects) are reported by name and the others predicted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnsam3d.inference.export import probabilities_file_for
from nnsam3d.io.dicom_series import DicomSeries, dicom_files_in, find_dicom_series
from nnsam3d.io.raw_dataset import DatasetDescription, RawCase, channel_pattern, find_cases_in_folder


class CaseInputError(ValueError):
    """The input path cannot be read as cases of this dataset; the message says why."""


@dataclass
class CaseSelection:
    """The outcome of looking at the input.

    cases: complete cases to predict, sorted by identifier.
    problems: case identifier → message for cases that cannot be predicted (missing channel,
        file not named after the dataset's convention).
    skipped: identifiers whose output already exists (``--continue``).
    """

    cases: list[RawCase] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def find_input_cases(input_path: str | os.PathLike, file_ending: str, num_channels: int) -> CaseSelection:
    """Cases in a folder, or the single case a file belongs to."""
    input_path = Path(input_path)
    pattern = channel_pattern(file_ending)
    if input_path.is_dir():
        cases, problems = find_cases_in_folder(input_path, file_ending, num_channels)
        if not cases and not problems:
            dicom_folders = _dicom_folders(input_path)
            if dicom_folders:
                return _dicom_cases(dicom_folders, num_channels)
        for entry in sorted(input_path.iterdir()):
            if entry.is_file() and entry.name.endswith(file_ending) and not pattern.match(entry.name):
                stem = entry.name[: -len(file_ending)]
                problems[stem] = (
                    f"{entry}: not named CASE_XXXX{file_ending} (one file per channel, XXXX = channel index); "
                    f"rename it, e.g. to {stem}_0000{file_ending}."
                )
        if not cases and not problems:
            raise CaseInputError(
                f"{input_path}: no images named CASE_XXXX{file_ending} (file ending from the model's dataset.json)."
            )
        return CaseSelection(cases, problems)
    if input_path.is_file():
        match = pattern.match(input_path.name)
        if match is None:
            if num_channels == 1 and input_path.name.endswith(file_ending):
                return CaseSelection([RawCase(input_path.name[: -len(file_ending)], (input_path,))])
            raise CaseInputError(
                f"{input_path}: not a channel file CASE_XXXX{file_ending} of a {num_channels}-channel case. "
                f"Give a folder of cases, or one channel file of a case."
            )
        case_id = match.group("case")
        cases, problems = find_cases_in_folder(input_path.parent, file_ending, num_channels)
        return CaseSelection(
            [case for case in cases if case.case_id == case_id],
            {k: v for k, v in problems.items() if k == case_id},
        )
    raise CaseInputError(f"{input_path}: no such file or folder.")


def _dicom_folders(folder: Path) -> list[Path]:
    """``folder`` itself if it holds DICOM files, and each subfolder that does."""
    candidates = [folder] + [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [candidate for candidate in candidates if dicom_files_in(candidate)]


def _series_case_id(folder: Path, series: DicomSeries, all_series: list[DicomSeries]) -> str:
    if len(all_series) == 1:
        return folder.name
    numbers = [s.series_number for s in all_series]
    if series.series_number and numbers.count(series.series_number) == 1:
        return f"{folder.name}_{series.series_number}"
    return f"{folder.name}_{series.series_uid}"


def _dicom_cases(folders: list[Path], num_channels: int) -> CaseSelection:
    if num_channels != 1:
        raise CaseInputError(
            f"{folders[0]}: DICOM series input is for one-channel models; this model has {num_channels} "
            f"channels. Convert each channel to an image file named CASE_XXXX<file ending>."
        )
    selection = CaseSelection()
    for folder in folders:
        all_series, problems = find_dicom_series(folder)
        for series in all_series:
            selection.cases.append(RawCase(_series_case_id(folder, series, all_series), (series,)))
        for key, message in problems.items():
            selection.problems[f"{folder.name}_{key}"] = message
    ids = [case.case_id for case in selection.cases]
    repeated = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
    if repeated:
        raise CaseInputError(f"DICOM folders give repeated case names {', '.join(repeated)}; rename the folders.")
    selection.cases.sort(key=lambda case: case.case_id)
    return selection


def select_part(case_ids: Sequence[str], num_parts: int, part_id: int) -> set[str]:
    """The identifiers of part ``part_id`` of ``num_parts`` (every ``num_parts``-th in sorted order)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise CaseInputError(f"--part-id must be in 0..{num_parts - 1} and --num-parts at least 1 (got {part_id}/{num_parts}).")
    return set(sorted(case_ids)[part_id::num_parts])


def restrict_selection(selection: CaseSelection, num_parts: int, part_id: int) -> CaseSelection:
    """Keep the part's share of the cases and of the problem cases (each part reports its own)."""
    keep = select_part([c.case_id for c in selection.cases] + list(selection.problems), num_parts, part_id)
    return CaseSelection(
        [c for c in selection.cases if c.case_id in keep],
        {k: v for k, v in selection.problems.items() if k in keep},
        list(selection.skipped),
    )


def select_cases(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    description: DatasetDescription,
    *,
    skip_existing: bool = False,
    save_probabilities: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    output_ending: str | None = None,
) -> CaseSelection:
    """The cases of ``input_path`` a run into ``output_dir`` predicts: this part's share
    (``num_parts``/``part_id``), without those whose outputs exist when ``skip_existing``
    (the label map, and the ``.npz`` too with ``save_probabilities``). ``output_ending``: that of
    the written label maps (default: the dataset's file ending).

    Raises :class:`CaseInputError` when the output folder is the input folder.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    source_folder = input_path if input_path.is_dir() else input_path.parent
    if output_dir.resolve() == source_folder.resolve():
        raise CaseInputError(
            f"{output_dir}: the output folder is the input folder; predictions would be mistaken for "
            f"input channels. Choose another output folder."
        )
    ending = output_ending or description.file_ending
    selection = restrict_selection(
        find_input_cases(input_path, description.file_ending, description.num_channels), num_parts, part_id
    )
    if skip_existing:
        remaining = []
        for case in selection.cases:
            output_file = output_dir / f"{case.case_id}{ending}"
            done = output_file.is_file() and (not save_probabilities or probabilities_file_for(output_file).is_file())
            (selection.skipped if done else remaining).append(case.case_id if done else case)
        selection.cases = remaining
    return selection
