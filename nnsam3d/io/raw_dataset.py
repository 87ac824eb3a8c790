"""The raw dataset in nnU-Net v2 format: ``dataset.json`` and the case files.

::

    DatasetXXX_Name/
        dataset.json          channel_names, labels, numTraining, file_ending
        imagesTr/CASE_0000.nii.gz  (one file per channel, _XXXX = channel index)
        labelsTr/CASE.nii.gz
        imagesTs/             optional, same naming as imagesTr
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nnsam3d.io.atomic import read_json

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
IGNORE_LABEL_NAME = "ignore"
"""nnU-Net's name for the label of unannotated voxels (sparse annotation): no loss, no metric,
never predicted. It must have the highest label value, so the classes stay 0..K-1."""


class DatasetFormatError(ValueError):
    """dataset.json or the folder layout does not follow the nnU-Net v2 format."""


@dataclass
class DatasetDescription:
    """The content of ``dataset.json``.

    channel_names: channel index (as string, "0", "1", ...) → modality name ("CT", "T2", ...).
    labels: label name → integer value; must contain "background": 0. A label named "ignore"
        (nnU-Net's convention, highest value) marks unannotated voxels: it is not a class.
    num_training: number of training cases (``numTraining``).
    file_ending: e.g. ".nii.gz".
    extra: every other key, kept verbatim so that writing back loses nothing.
    """

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def ignore_label(self) -> int | None:
        """Value of the "ignore" label (unannotated voxels), None when the dataset has none."""
        return self.labels.get(IGNORE_LABEL_NAME)

    @property
    def num_classes(self) -> int:
        """Number of output classes including background (labels 0..K-1; the ignore label, the
        highest value, is not a class: the network never predicts it)."""
        return max(v for name, v in self.labels.items() if name != IGNORE_LABEL_NAME) + 1

    @property
    def foreground_labels(self) -> list[int]:
        """Foreground class values (neither background nor the ignore label)."""
        return sorted(v for name, v in self.labels.items() if v != 0 and name != IGNORE_LABEL_NAME)

    def label_name(self, value: int) -> str:
        for name, label in self.labels.items():
            if label == value:
                return name
        return str(value)

    def modality(self, channel: int) -> str:
        return self.channel_names[str(channel)]

    def to_json(self) -> dict:
        content = dict(self.extra)
        if self.name:
            content["name"] = self.name
        content.update(
            {
                "channel_names": dict(self.channel_names),
                "labels": dict(self.labels),
                "numTraining": self.num_training,
                "file_ending": self.file_ending,
            }
        )
        return content

    @classmethod
    def from_json(cls, content: dict, source: str = "dataset.json") -> "DatasetDescription":
        """Parse ``dataset.json`` content; anything malformed raises DatasetFormatError naming ``source``."""
        if not isinstance(content, dict):
            raise DatasetFormatError(f"{source}: must hold a JSON object with the keys {', '.join(REQUIRED_KEYS)}.")
        missing = [key for key in REQUIRED_KEYS if key not in content]
        if missing:
            raise DatasetFormatError(
                f"{source}: missing required key(s) {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)}; "
                f"present: {', '.join(content) or 'none'})."
            )
        for key, example in (("channel_names", '{"0": "CT"}'), ("labels", '{"background": 0, "liver": 1}')):
            if not isinstance(content[key], dict):
                raise DatasetFormatError(
                    f"{source}: {key} must be a JSON object such as {example}, "
                    f"found {type(content[key]).__name__} {content[key]!r}."
                )
        try:
            return cls._from_checked_json(content, source)
        except DatasetFormatError:
            raise
        except (TypeError, ValueError) as error:
            # e.g. a label value or numTraining that is not a number: int() raises without the file's name
            raise DatasetFormatError(f"{source}: malformed content ({type(error).__name__}: {error}).") from error

    @classmethod
    def _from_checked_json(cls, content: dict, source: str) -> "DatasetDescription":
        channel_names = {str(k): str(v) for k, v in content["channel_names"].items()}
        expected_channels = [str(i) for i in range(len(channel_names))]
        if sorted(channel_names, key=int) != expected_channels:
            raise DatasetFormatError(
                f"{source}: channel_names keys must be 0..{len(channel_names) - 1}, "
                f"found {list(channel_names)}."
            )
        labels = {}
        for name, value in content["labels"].items():
            if isinstance(value, (list, tuple)):
                raise DatasetFormatError(
                    f"{source}: label '{name}' is a region {value}; region-based training is not "
                    f"supported by nnsam3d. Give every label a single integer value."
                )
            labels[str(name)] = int(value)
        if labels.get("background") != 0:
            raise DatasetFormatError(f"{source}: labels must contain \"background\": 0.")
        values = sorted(labels.values())
        if values != list(range(len(values))):
            raise DatasetFormatError(
                f"{source}: label values must be consecutive integers 0..{len(values) - 1}, found {values}."
            )
        if IGNORE_LABEL_NAME in labels and labels[IGNORE_LABEL_NAME] != values[-1]:
            raise DatasetFormatError(
                f"{source}: the \"{IGNORE_LABEL_NAME}\" label must have the highest value (as in nnU-Net), "
                f"found {labels[IGNORE_LABEL_NAME]} with labels up to {values[-1]}."
            )
        extra = {k: v for k, v in content.items() if k not in REQUIRED_KEYS and k != "name"}
        return cls(
            channel_names=channel_names,
            labels=labels,
            num_training=int(content["numTraining"]),
            file_ending=str(content["file_ending"]),
            name=str(content.get("name", "")),
            extra=extra,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "DatasetDescription":
        path = Path(path)
        if not path.is_file():
            raise DatasetFormatError(f"{path}: dataset.json not found.")
        return cls.from_json(read_json(path), source=str(path))


@dataclass(frozen=True)
class RawCase:
    """One case: its identifier, one image file per channel, and the label file if any."""

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path | None = None


def channel_pattern(file_ending: str) -> re.Pattern:
    """Matches a channel file name ``CASE_XXXX<file_ending>``; groups ``case`` and ``channel``."""
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + r"$")


def label_path(dataset_dir: str | os.PathLike, case_id: str, file_ending: str) -> Path:
    """Where a training case's label file belongs: ``labelsTr/CASE<file_ending>``."""
    return Path(dataset_dir) / "labelsTr" / f"{case_id}{file_ending}"


def with_labels(dataset_dir: str | os.PathLike, cases: list[RawCase], file_ending: str) -> list[RawCase]:
    """``cases`` with their label file from ``labelsTr`` attached (label_file None where absent)."""
    result = []
    for case in cases:
        label = label_path(dataset_dir, case.case_id, file_ending)
        result.append(RawCase(case.case_id, case.image_files, label if label.is_file() else None))
    return result


def find_cases_in_folder(
    folder: str | os.PathLike, file_ending: str, num_channels: int
) -> tuple[list[RawCase], dict[str, str]]:
    """Group ``CASE_XXXX<ending>`` files in a folder into cases.

    Returns the complete cases (sorted by identifier) and, for incomplete ones, a message per
    case identifier naming the missing channel files.
    """
    folder = Path(folder)
    pattern = channel_pattern(file_ending)
    channels_by_case: dict[str, dict[int, Path]] = {}
    not_files: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if not match:
            continue
        channels_by_case.setdefault(match.group("case"), {})
        if entry.is_file():
            channels_by_case[match.group("case")][int(match.group("channel"))] = entry
        else:
            # A broken symbolic link or a link loop: dropping the case silently would train on less.
            not_files.setdefault(match.group("case"), []).append(entry)
    complete, problems = [], {}
    for case_id, channels in sorted(channels_by_case.items()):
        missing = [i for i in range(num_channels) if i not in channels]
        unexpected = sorted(set(channels) - set(range(num_channels)))
        if case_id in not_files:
            reasons = "; ".join(f"{entry} is a {unreadable_entry_reason(entry)}" for entry in not_files[case_id])
            problems[case_id] = f"{folder / case_id}: {reasons}"
        elif missing:
            names = ", ".join(f"{case_id}_{i:04d}{file_ending}" for i in missing)
            problems[case_id] = f"{folder / case_id}: missing channel file(s) {names}."
        elif unexpected:
            names = ", ".join(channels[i].name for i in unexpected)
            problems[case_id] = (
                f"{folder / case_id}: {len(channels)} channel files but channel_names declares "
                f"{num_channels} ({names} unexpected)."
            )
        else:
            complete.append(RawCase(case_id, tuple(channels[i] for i in range(num_channels))))
    return complete, problems


def unreadable_entry_reason(path: Path) -> str:
    """Why a name that should be a case file is not a readable file; reads after 'is a'."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports loops this way
            return "symbolic link loop (it leads back to itself), not a file; replace it with the image file."
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "symbolic link loop (it leads back to itself), not a file; replace it with the image file."
            return f"broken symbolic link (to {os.readlink(path)}); replace it with the image file."
    if path.is_dir():
        return "folder, not an image file."
    return "entry that is not a readable file."


def training_cases(dataset_dir: str | os.PathLike, description: DatasetDescription) -> list[RawCase]:
    """Every case found in ``imagesTr`` with its label from ``labelsTr`` (label_file None if absent).

    Incomplete cases are skipped here; the integrity check reports them.
    """
    dataset_dir = Path(dataset_dir)
    cases, _problems = find_cases_in_folder(
        dataset_dir / "imagesTr", description.file_ending, description.num_channels
    )
    return with_labels(dataset_dir, cases, description.file_ending)


def labelled_training_cases(dataset_dir: str | os.PathLike, description: DatasetDescription) -> list[RawCase]:
    """Every training case with all its channels and its label; anything less raises.

    Fingerprinting and preprocessing start here, so that a case with a missing channel or label
    stops the run before anything is written instead of silently leaving the case out.
    ``--verify_dataset_integrity`` reports these problems and many more at once.
    """
    dataset_dir = Path(dataset_dir)
    images_dir = dataset_dir / "imagesTr"
    if not images_dir.is_dir():
        raise DatasetFormatError(
            f"{images_dir}: folder not found; training images go there (CASE_0000{description.file_ending})."
        )
    cases, problems = find_cases_in_folder(images_dir, description.file_ending, description.num_channels)
    messages = list(problems.values())
    result = []
    for case in with_labels(dataset_dir, cases, description.file_ending):
        if case.label_file is not None:
            result.append(case)
        else:
            label = label_path(dataset_dir, case.case_id, description.file_ending)
            reason = f"is a {unreadable_entry_reason(label)}" if label.is_symlink() else f"label file missing for training case '{case.case_id}'."
            messages.append(f"{label}: {reason}")
    if not result and not messages:
        messages.append(
            f"{images_dir}: no training images named CASE_XXXX{description.file_ending} "
            f"(file_ending from dataset.json)."
        )
    if messages:
        raise DatasetFormatError(
            "The raw dataset is incomplete:\n  " + "\n  ".join(messages)
            + "\nFix these files, or run with --verify_dataset_integrity for a full check."
        )
    return result
