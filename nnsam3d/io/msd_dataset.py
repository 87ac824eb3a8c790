"""Medical Segmentation Decathlon tasks → nnU-Net v2 datasets (as ``nnUNetv2_convert_MSD_dataset``).

An MSD task (``TaskXX_Name/``) stores all modalities of a case in one 4D NIfTI (channels along
the 4th axis) and describes itself in an MSD ``dataset.json`` (``modality``, ``labels`` value →
name, ``training`` and ``test`` lists). The nnU-Net format wants one 3D file per channel
(``CASE_XXXX.nii.gz``) and ``channel_names`` / ``labels`` name → value. Channels are cut out
with nibabel's slicer, so each keeps the 4D file's data type, scaling, affine and qform/sform;
3D images and the label maps are copied byte for byte. Every file is written atomically and
``dataset.json`` last, so a converted dataset is complete or has no ``dataset.json``.
"""

from __future__ import annotations

import os
import re
import shutil
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib

from nnsam3d.io.atomic import atomic_path, read_json, write_json_atomic
from nnsam3d.io.raw_dataset import DatasetFormatError

TASK_FOLDER = re.compile(r"^Task(?P<id>\d+)_(?P<name>.+)$")


class MsdFormatError(DatasetFormatError):
    """The folder is not an MSD task as published; the message names the file and the problem."""


def task_id_and_name(task_dir: str | os.PathLike) -> tuple[int, str]:
    """``Task02_Heart`` → (2, "Heart")."""
    match = TASK_FOLDER.match(Path(task_dir).name)
    if match is None:
        raise MsdFormatError(f"{task_dir}: an MSD task folder is named TaskXX_Name (e.g. Task02_Heart).")
    return int(match.group("id")), match.group("name")


def _case_id(entry: str | dict, key: str, source: Path) -> str:
    path = entry[key] if isinstance(entry, dict) else entry
    name = Path(path).name
    if not name.endswith(".nii.gz"):
        raise MsdFormatError(f"{source}: {key} '{path}' is not a .nii.gz file.")
    return name[: -len(".nii.gz")]


def _split_channels(source: Path, target_dir: Path, case_id: str, num_channels: int) -> None:
    """One image (3D, or 4D with channels last) → ``target_dir/CASE_XXXX.nii.gz`` per channel."""
    if not source.is_file():
        raise MsdFormatError(f"{source}: image listed in dataset.json not found.")
    image = nib.load(str(source))
    channels = 1 if image.ndim == 3 else image.shape[3]
    if image.ndim not in (3, 4) or channels != num_channels:
        raise MsdFormatError(
            f"{source}: shape {image.shape} does not hold the {num_channels} channel(s) of dataset.json's modality."
        )
    for channel in range(channels):
        target = target_dir / f"{case_id}_{channel:04d}.nii.gz"
        with atomic_path(target) as temporary:
            if image.ndim == 3:
                shutil.copyfile(source, temporary)
            else:
                nib.save(image.slicer[:, :, :, channel], str(temporary))


def _copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise MsdFormatError(f"{source}: label listed in dataset.json not found.")
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def _convert_case(job: tuple, num_channels: int) -> None:
    kind, source, target_dir, case_id = job
    if kind == "image":
        _split_channels(source, target_dir, case_id, num_channels)
    else:
        _copy(source, target_dir / f"{case_id}.nii.gz")


def nnunet_dataset_json(msd: dict, source: Path) -> dict:
    """The nnU-Net v2 ``dataset.json`` for an MSD ``dataset.json`` (other keys kept verbatim)."""
    for key in ("modality", "labels", "training"):
        if key not in msd:
            raise MsdFormatError(f"{source}: MSD dataset.json without '{key}'.")
    labels = {str(name): int(value) for value, name in msd["labels"].items()}
    converted = {k: v for k, v in msd.items() if k not in ("modality", "labels", "training", "test", "numTest",
                                                         "tensorImageSize", "numTraining")}
    converted.update(
        channel_names={str(k): str(v) for k, v in msd["modality"].items()},
        labels=labels,
        numTraining=len(msd["training"]),
        file_ending=".nii.gz",
    )
    return converted


def convert_msd_task(task_dir: str | os.PathLike, target_dir: str | os.PathLike, num_processes: int = 2) -> Path:
    """Write the nnU-Net v2 dataset of the MSD task in ``task_dir`` into ``target_dir`` (created).

    Returns ``target_dir``. Raises :class:`MsdFormatError` naming the file for a missing or
    malformed ``dataset.json``, a listed file that is missing, or an image whose channel count
    differs from ``modality``.
    """
    task_dir, target_dir = Path(task_dir), Path(target_dir)
    source_json = task_dir / "dataset.json"
    if not source_json.is_file():
        raise MsdFormatError(f"{source_json}: not found; an MSD task folder holds dataset.json, imagesTr, labelsTr.")
    try:
        msd = read_json(source_json)
    except ValueError as error:
        raise MsdFormatError(str(error)) from error
    description = nnunet_dataset_json(msd, source_json)
    num_channels = len(description["channel_names"])
    jobs = []
    for entry in msd["training"]:
        case_id = _case_id(entry, "image", source_json)
        jobs.append(("image", task_dir / "imagesTr" / f"{case_id}.nii.gz", target_dir / "imagesTr", case_id))
        label_id = _case_id(entry, "label", source_json)
        jobs.append(("label", task_dir / "labelsTr" / f"{label_id}.nii.gz", target_dir / "labelsTr", case_id))
    for entry in msd.get("test", []):
        case_id = _case_id(entry, "image", source_json)
        jobs.append(("image", task_dir / "imagesTs" / f"{case_id}.nii.gz", target_dir / "imagesTs", case_id))
    # MSD's file lists name files as ./imagesTr/x.nii.gz, and the archives carry macOS '._x'
    # resource files beside them; only the listed files are converted, so those are ignored.
    if (target_dir / "dataset.json").exists():
        (target_dir / "dataset.json").unlink()  # incomplete until rewritten last
    convert = partial(_convert_case, num_channels=num_channels)
    if num_processes > 1:
        with get_context("spawn").Pool(num_processes) as pool:
            pool.map(convert, jobs)
    else:
        for job in jobs:
            convert(job)
    write_json_atomic(target_dir / "dataset.json", description)
    return target_dir
