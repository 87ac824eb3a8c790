"""Atomic writes: a file either appears complete or not at all.

Every writer in nnsam3d goes through :func:`atomic_path`, so that an interrupted run never
leaves a half-written file that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nnsam3d.io.disk_space import DiskFullError, disk_full_message, is_disk_full


TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_ID_LENGTH = 12


def remove_leftover_temporaries(folder: str | os.PathLike, stem: str) -> list[Path]:
    """Delete the temporary files that a killed writer left in ``folder`` for outputs named
    ``stem.<ending>`` (``os.replace`` never ran for them); returns what was deleted.

    Only for a writer known to be dead (a Ray worker whose process is gone): a live writer's
    temporary file would vanish under it. ``case_1`` does not match ``case_10``'s files."""
    pattern = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}[0-9a-f]{{{TEMPORARY_ID_LENGTH}}}-{re.escape(stem)}\.")
    removed = []
    for path in Path(folder).glob(f"{TEMPORARY_PREFIX}*"):
        if pattern.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class InvalidJSONError(ValueError):
    """A JSON file that does not parse; the message names the file and the position."""


@contextmanager
def atomic_path(final_path: str | os.PathLike, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; move it into place when the block succeeds.

    The temporary name keeps the final name as its suffix because some writers choose the
    format from the ending (``.nii.gz`` compresses, ``.npy`` is not appended twice).
    A full disk, however the writer reports it, raises :class:`~nnsam3d.io.disk_space.DiskFullError`
    naming the folder and the space needed (``expected_bytes`` when the caller knows it, else at
    least what was written before the disk filled up); the temporary file is removed.
    """
    final_path = Path(final_path)
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if is_disk_full(error, final_path.parent):
            raise DiskFullError(disk_full_message(final_path.parent, f"creating {final_path.parent.name}", None)) from error
        raise
    temporary = final_path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:TEMPORARY_ID_LENGTH]}-{final_path.name}")
    try:
        yield temporary
        os.replace(temporary, final_path)
    except (OSError, RuntimeError) as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error, final_path.parent):
            raise
        written = temporary.stat().st_size if temporary.exists() else 0
        temporary.unlink(missing_ok=True)  # so that the message reports the space really free
        needed = expected_bytes if expected_bytes else (written or None)
        raise DiskFullError(disk_full_message(final_path.parent, f"writing {final_path.name}", needed)) from error
    finally:
        if temporary.exists():
            temporary.unlink()


def write_json_atomic(path: str | os.PathLike, content: Any) -> None:
    text = json.dumps(content, indent=2, sort_keys=False) + "\n"
    with atomic_path(path, expected_bytes=len(text.encode("utf-8"))) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a broken file raises :class:`InvalidJSONError` (a ``ValueError``) naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise InvalidJSONError(f"{path}: not valid JSON ({error}).") from error


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, expected_bytes=array.nbytes + 128) as temporary:
        np.save(temporary, array, allow_pickle=False)


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    # compressed: the raw size is an upper bound of what is needed
    with atomic_path(path, expected_bytes=sum(a.nbytes for a in arrays.values()) or None) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path, expected_bytes=tensor_bytes(obj) or None) as temporary:
        torch.save(obj, temporary)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside nested dicts/lists/tuples: about the size ``torch.save`` writes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes() if obj.device.type != "meta" else 0
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0
