"""A full disk as a user error: which folder is full and how much space the write needs.

Writers report a full disk in different ways: ``OSError`` with ``errno.ENOSPC`` (plain file
writes), ``OSError: N requested and M written`` without an errno (``numpy.save``), and
``RuntimeError: ... file write failed`` (``torch.save``). :func:`is_disk_full` recognises all of
them, so that :func:`nnsam3d.io.atomic.atomic_path` can turn each into one
:class:`DiskFullError` naming the folder and the space needed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

NEARLY_FULL_BYTES = 1 << 20
"""A write failing while less than this is free (1 MiB) failed because the disk is full."""

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No space left where nnsam3d writes; the message names the folder and the space needed.

    Built from the message alone (``DiskFullError(message)``) so that it crosses process
    boundaries (multiprocessing pickles exceptions by their arguments).
    """


def format_bytes(count: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space for unprivileged writers in the file system holding ``folder`` (None if unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``error``, raised while writing into ``folder``, means the disk is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(error, (OSError, RuntimeError)):
        # numpy's and torch's short-write errors carry no errno: ask the file system.
        free = free_bytes(folder)
        return free is not None and free < NEARLY_FULL_BYTES
    return False


def says_disk_full(error: BaseException) -> bool:
    """Whether ``error`` itself says the disk is full (a :class:`DiskFullError`, or ENOSPC/EDQUOT),
    for callers that do not know the folder :func:`is_disk_full` would ask."""
    return isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS)


def disk_full_message(folder: str | os.PathLike, what: str, needed_bytes: int | None) -> str:
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    free = free_bytes(existing) if existing is not None else None
    needs = f"needs about {format_bytes(needed_bytes)}" if needed_bytes else "needs more space"
    has = f", {format_bytes(free)} free" if free is not None else ""
    return (
        f"{folder}: no space left on the disk ({what} {needs}{has}). Free some space there, or point "
        f"the folder elsewhere, and run the same command again: nothing half-written was left behind "
        f"and finished work is kept."
    )


def require_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raise :class:`DiskFullError` before starting ``what`` when ``folder``'s disk has less than
    ``needed_bytes`` free (an unknown free space passes)."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    free = free_bytes(existing) if existing is not None else None
    if free is not None and free < needed_bytes:
        raise DiskFullError(disk_full_message(folder, what, needed_bytes))
