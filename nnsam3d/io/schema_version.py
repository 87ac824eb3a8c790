"""One check for the ``schema_version`` every nnsam3d JSON file and checkpoint carries."""

from __future__ import annotations

from typing import Mapping


def require_schema_version(
    content: Mapping,
    expected: int,
    *,
    what: str,
    source: str,
    advice: str,
    error: type[Exception] = ValueError,
) -> int:
    """Return the version; raise ``error`` naming ``source`` and saying what to do when ``content`` has another version.

    what: the kind of file ("plans", "fingerprint", ...); advice: the command that rewrites it.
    A missing version counts as -1, so files from before versioning are refused too.
    """
    try:
        version = int(content.get("schema_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version != expected:
        raise error(f"{source}: {what} schema version {version}, this nnsam3d reads version {expected}. {advice}")
    return version
