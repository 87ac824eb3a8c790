"""Atomic writes: a file either appears complete or not at all.

Every writer in nnsam3d goes through :func:`atomic_path`, so that an interrupted run never
leaves a half-written file that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; move it into place when the block succeeds.

    The temporary name keeps the final name as its suffix because some writers choose the
    format from the ending (``.nii.gz`` compresses, ``.npy`` is not appended twice).
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = final_path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{final_path.name}")
    try:
        yield temporary
        os.replace(temporary, final_path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_json_atomic(path: str | os.PathLike, content: Any) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=False)
            handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a broken file raises ``ValueError`` naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        np.save(temporary, array, allow_pickle=False)


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
