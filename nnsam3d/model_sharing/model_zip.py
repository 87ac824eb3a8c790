"""Reading an exported model zip: its model card, its extraction (checked against the card), and
the model folder of ``nnsam3d_predict -m`` (a folder as is, or a zip extracted for the run)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from nnsam3d.io.atomic import read_json
from nnsam3d.io.disk_space import DiskFullError, disk_full_message, is_disk_full
from nnsam3d.model.sam_checkpoints import file_sha256
from nnsam3d.model_sharing.model_card import MODEL_CARD_FILENAME, ModelSharingError


def _model_root(archive: zipfile.ZipFile, source: Path) -> PurePosixPath:
    """The ``DatasetXXX_Name/TRAINER__PLANS`` folder of an exported model; refuses anything else."""
    names = archive.namelist()
    cards = [PurePosixPath(n) for n in names if PurePosixPath(n).name == MODEL_CARD_FILENAME]
    if len(cards) != 1 or len(cards[0].parts) != 3:
        raise ModelSharingError(
            f"{source}: not a model exported by nnsam3d_export_model (expected one "
            f"DatasetXXX_Name/TRAINER__PLANS/{MODEL_CARD_FILENAME})."
        )
    root = cards[0].parent
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or path.parts[:2] != root.parts:
            raise ModelSharingError(f"{source}: unexpected member '{name}' outside {root}; refusing to extract it.")
    return root


def read_model_card(source: str | os.PathLike) -> dict:
    """The model card of an exported zip or of a model folder."""
    source = Path(source)
    try:
        if source.is_dir():
            return read_json(source / MODEL_CARD_FILENAME)
        with zipfile.ZipFile(source) as archive:
            return json.loads(archive.read(str(_model_root(archive, source) / MODEL_CARD_FILENAME)))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        if isinstance(error, ModelSharingError):
            raise
        raise ModelSharingError(f"{source}: cannot read its model card ({error}).") from error


def verify_checkpoints(model_dir: Path, card: dict, source: Path) -> None:
    """Every checkpoint the card lists is in ``model_dir`` with the card's SHA-256; else
    :class:`ModelSharingError` naming the file (``source``: the zip, for the message)."""
    for relative, expected in card.get("checkpoint_sha256", {}).items():
        path = model_dir / relative
        if not path.is_file():
            raise ModelSharingError(f"{source}: {relative}, listed in its model card, is not in the zip; "
                                    f"the zip is incomplete. Export the model again.")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelSharingError(
                f"{source}: {relative} has SHA-256 {actual}, but the model card says {expected}: the file was "
                f"damaged or changed after export. Nothing was installed; get the model zip again."
            )


def extract_model(source: str | os.PathLike, target_root: str | os.PathLike) -> Path:
    """Extract an exported model under ``target_root`` (``target_root/DatasetXXX_Name/TRAINER__PLANS``)
    and return that folder, after checking its checkpoints against the model card's SHA-256
    (:func:`verify_checkpoints`). The caller owns ``target_root`` and removes it on failure."""
    source = Path(source)
    needed = None
    try:
        with zipfile.ZipFile(source) as archive:
            root = _model_root(archive, source)
            needed = sum(member.file_size for member in archive.infolist())
            archive.extractall(target_root)
    except (OSError, zipfile.BadZipFile) as error:
        if needed is not None and is_disk_full(error, target_root):
            raise DiskFullError(disk_full_message(target_root, f"extracting {source.name}", needed)) from error
        raise ModelSharingError(f"{source}: cannot be read as a model zip ({error}).") from error
    model_dir = Path(target_root, *root.parts)
    verify_checkpoints(model_dir, read_model_card(model_dir), source)
    return model_dir


@contextmanager
def opened_model(source: str | os.PathLike) -> Iterator[Path]:
    """The model folder of ``source``: a model folder as is, or an exported zip extracted into a
    temporary folder that is removed afterwards. No results folder is needed or touched."""
    source = Path(source)
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        raise ModelSharingError(f"{source}: no such model folder or model zip.")
    with tempfile.TemporaryDirectory(prefix="nnsam3d-model-") as temporary:
        yield extract_model(source, temporary)
