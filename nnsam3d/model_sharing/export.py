"""Export: one trained model folder into one zip file (``nnsam3d_export_model``).

Checkpoint files are copied byte for byte (whatever their internals); only the plans and
``dataset.json`` are read from one of them. ``checkpoint_latest.pth`` (for resuming training)
stays behind. The layout inside the zip is described in :mod:`nnsam3d.model_sharing`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from nnsam3d.inference.model_folders import CHECKPOINT_FILES, ModelFolderError, available_folds
from nnsam3d.inference.postprocessing import POSTPROCESSING_FILENAME
from nnsam3d.io.atomic import atomic_path
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.model_sharing.model_card import (
    MODEL_CARD_FILENAME,
    MODEL_CARD_TEXT_FILENAME,
    ModelSharingError,
    build_model_card,
    model_card_text,
)

FOLD_EXTRAS = ("training_log.txt", "progress.png", "validation/summary.json")
"""Small files of a fold that document it; the validation segmentations are left out."""


def export_model(
    model_dir: str | os.PathLike,
    output_file: str | os.PathLike,
    folds: Sequence[int | str] | None = None,
    checkpoint_names: Sequence[str] = tuple(CHECKPOINT_FILES.values()),
) -> dict:
    """Write the model folder ``model_dir`` (``.../DatasetXXX_Name/TRAINER__PLANS``) into the zip
    ``output_file`` (atomically); returns the model card.

    folds: those to export (default: every fold with one of ``checkpoint_names``).
    checkpoint_names: checkpoint files to take from each fold, those present.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: model folder not found.")
    present = sorted({f for name in checkpoint_names for f in available_folds(model_dir, name)},
                     key=lambda f: (f == "all", int(f) if f.isdigit() else 0))
    wanted = [str(f) for f in folds] if folds is not None else present
    missing = [f for f in wanted if f not in present]
    if missing or not wanted:
        raise ModelSharingError(
            f"{model_dir}: no {' or '.join(checkpoint_names)} in fold(s) {', '.join(missing) or '(none)'}; "
            f"folds with checkpoints: {', '.join(present) or 'none'}."
        )
    fold_files = {fold: [n for n in checkpoint_names if (model_dir / f"fold_{fold}" / n).is_file()] for fold in wanted}
    first = model_dir / f"fold_{wanted[0]}" / fold_files[wanted[0]][0]
    checkpoint = load_checkpoint(first, mmap=True)  # only its plans and dataset.json are read
    plans, dataset_json, sam_source = checkpoint.plans, checkpoint.dataset_json, checkpoint.sam_source
    del checkpoint
    card = build_model_card(model_dir, fold_files, plans, dataset_json, sam_source)
    root = PurePosixPath(model_dir.parent.name, model_dir.name)
    with atomic_path(output_file) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(str(root / MODEL_CARD_FILENAME), json.dumps(card, indent=2) + "\n")
            archive.writestr(str(root / MODEL_CARD_TEXT_FILENAME), model_card_text(card))
            archive.writestr(str(root / "plans.json"), json.dumps(plans, indent=2) + "\n")
            archive.writestr(str(root / "dataset.json"), json.dumps(dataset_json, indent=2) + "\n")
            if card["postprocessing"]:
                archive.write(model_dir / POSTPROCESSING_FILENAME, str(root / POSTPROCESSING_FILENAME))
            for fold, names in fold_files.items():
                for name in names:
                    # Checkpoints are already compressed by torch's zip format: store them.
                    archive.write(model_dir / f"fold_{fold}" / name, str(root / f"fold_{fold}" / name),
                                  compress_type=zipfile.ZIP_STORED)
                for extra in FOLD_EXTRAS:
                    if (model_dir / f"fold_{fold}" / extra).is_file():
                        archive.write(model_dir / f"fold_{fold}" / extra, str(root / f"fold_{fold}" / extra))
    return card
