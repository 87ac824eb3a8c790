"""Install: an exported model zip into a results folder (``nnsam3d_install_model``).

The model appears complete or not at all, and ``--force`` never loses the model it replaces.
The steps, each undone if a later one fails before the new model is in place:

1. extract the zip into a staging folder beside the destination (``.tmp-install-*`` in the
   results folder, so that the renames below stay on one file system and are atomic) and check
   its checkpoints against the model card's SHA-256;
2. with ``force``, rename the installed model into the staging folder (``previous``);
3. rename the new model into place; if that fails, rename the previous one back;
4. delete the staging folder, and with it the previous model.

A failure in steps 1-3 leaves the results folder as it was: the previous model in place and no
staging folder. After step 3 the new model is installed; if deleting the previous one fails, a
warning names the folder holding it. Only a process killed between steps 2 and 3 leaves the
previous model outside its place: complete, in ``.tmp-install-*/previous``.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

from nnsam3d.model_sharing.model_card import ModelSharingError
from nnsam3d.model_sharing.model_zip import extract_model

STAGING_PREFIX = ".tmp-install-"
PREVIOUS_FOLDER = "previous"
"""Where, inside the staging folder, the replaced model waits until the new one is in place."""


def _move_into_place(new: Path, destination: Path, aside: Path) -> None:
    """Steps 2 and 3: the installed model (if any) to ``aside``, ``new`` to ``destination``; on
    failure the previous model is renamed back before the error goes on."""
    replacing = destination.exists()
    if replacing:
        os.replace(destination, aside)
    try:
        os.replace(new, destination)
    except BaseException:
        if replacing:
            os.replace(aside, destination)
        raise


def install_model(source: str | os.PathLike, results_root: str | os.PathLike, force: bool = False) -> Path:
    """Install an exported model into ``results_root``; returns the installed model folder
    (``results_root/DatasetXXX_Name/TRAINER__PLANS``).

    An installed model of the same dataset, trainer and plans is kept (``ModelSharingError``)
    unless ``force``: then it is replaced by the steps of the module docstring. A zip whose
    checkpoints differ from its model card's SHA-256 is refused, naming the file.
    """
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    staging = results_root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    aside = staging / PREVIOUS_FOLDER
    new_parent = None  # the dataset folder, when this install creates it
    try:
        extracted = extract_model(source, staging)
        destination = results_root / extracted.relative_to(staging)
        if destination.exists() and not force:
            raise ModelSharingError(
                f"{destination} already exists; nothing was changed. Pass --force to replace it."
            )
        if not destination.parent.exists():
            new_parent = destination.parent
            new_parent.mkdir(parents=True)
        _move_into_place(extracted, destination, aside)
    except BaseException as error:
        if aside.exists():  # the previous model could not be renamed back: keep it, say where
            raise ModelSharingError(
                f"{source}: installing failed ({error}), and the model it was replacing could not be moved "
                f"back; that model is complete in {aside}. Move it back to "
                f"{results_root / extracted.relative_to(staging)} before anything else."
            ) from error
        shutil.rmtree(staging, ignore_errors=True)
        if new_parent is not None and not any(new_parent.iterdir()):
            new_parent.rmdir()
        raise
    try:
        shutil.rmtree(staging)
    except OSError as error:
        warnings.warn(f"installed {destination}, but the model it replaced could not be deleted from {staging} "
                      f"({error}); delete that folder.", stacklevel=2)
    return destination
