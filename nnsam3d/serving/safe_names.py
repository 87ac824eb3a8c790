"""Image and label ids, and label tags, as the client sends them → names that cannot leave the datastore.

An id is refused unless it is a plain name: letters, digits, ``.``, ``_``, ``-`` (no path
separator, no ``..``, no NUL, no leading dot), at most :data:`MAX_ID_LENGTH` characters. The
folder it lands in is checked again after resolving symlinks (:func:`inside`), so a symlink
planted in the datastore cannot lead a read or a write elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nnsam3d.serving.errors import ServingError

MAX_ID_LENGTH = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def checked_id(value: str, what: str = "image id") -> str:
    """``value`` if it is a safe id, else :class:`ServingError` (400) saying why."""
    if not isinstance(value, str) or not value:
        raise ServingError(f"{what} is missing")
    if len(value) > MAX_ID_LENGTH:
        raise ServingError(f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if "\x00" in value:
        raise ServingError(f"{what} {value!r} contains a NUL byte")
    if not _ID.fullmatch(value) or ".." in value:
        raise ServingError(f"{what} {value!r} is not a plain name: use letters, digits, '.', '_' and '-' only, "
                           "starting with a letter or digit, without '..' or path separators")
    return value


def inside(root: Path, path: Path) -> Path:
    """``path`` if it resolves (symlinks followed) to a place inside ``root``, else a 400 error."""
    resolved_root = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(path))
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise ServingError(f"{path.name!r} leads outside the datastore (a symlink?); refused")
    return path
