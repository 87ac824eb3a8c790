"""Sharing a trained model: one zip file out (export), into a results folder (install), or
straight into prediction.

The zip holds one model folder, laid out as in ``$nnSAM3D_results``, so that installing is
extracting it there::

    DatasetXXX_Name/TRAINER__PLANS/
        model_card.json  MODEL_CARD.md      what the model is (below)
        plans.json  dataset.json            what it was trained with (from its checkpoints)
        postprocessing.json                 when nnsam3d_find_best_configuration chose one
        fold_K/checkpoint_final.pth, checkpoint_best.pth (those present), training_log.txt,
               validation/summary.json

Checkpoint files are copied byte for byte (whatever their internals); only the plans and
``dataset.json`` are read from one of them. ``checkpoint_latest.pth`` (for resuming training)
stays behind. The model card names the dataset, trainer, plans, folds, the checkpoint files
with their SHA-256, the backbone and the official SAM checkpoint it belongs to, and the
cross-validation Dice found in the model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import nnsam3d
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, ModelFolderError, available_folds
from nnsam3d.inference.postprocessing import POSTPROCESSING_FILENAME
from nnsam3d.io.atomic import atomic_path, read_json
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.model.backbones import BACKBONES

MODEL_CARD_FILENAME = "model_card.json"
MODEL_CARD_TEXT_FILENAME = "MODEL_CARD.md"
MODEL_CARD_FORMAT = "nnsam3d-model"
FOLD_EXTRAS = ("training_log.txt", "progress.png", "validation/summary.json")
"""Small files of a fold that document it; the validation segmentations are left out."""


class ModelSharingError(ValueError):
    """A model that cannot be exported, or a file that is not an exported model; the message says why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cross_validation(model_dir: Path, fold_files: dict[str, list[str]]) -> dict:
    """The cross-validation Dice found in ``model_dir``: the collected cross-validation summary
    of ``nnsam3d_find_best_configuration`` over the most folds, else each fold's validation."""
    collected = sorted(model_dir.glob("crossval_results_folds_*/summary.json"), key=lambda p: len(p.parent.name))
    if collected:
        summary = read_json(collected[-1])
        return {
            "source": collected[-1].relative_to(model_dir).as_posix(),
            "foreground_mean_dice": summary["foreground_mean"]["Dice"],
            "dice_per_class": {name: summary["mean"][name]["Dice"] for name in summary["labels"]},
        }
    per_fold = {}
    for fold in fold_files:
        path = model_dir / f"fold_{fold}" / "validation" / "summary.json"
        if path.is_file():
            per_fold[fold] = read_json(path)["foreground_mean"]["Dice"]
    if not per_fold:
        return {"source": None, "note": "no validation summary in the model folder"}
    defined = [v for v in per_fold.values() if v is not None]
    return {
        "source": "fold_K/validation/summary.json",
        "foreground_mean_dice_per_fold": per_fold,
        "foreground_mean_dice": sum(defined) / len(defined) if defined else None,
    }


def _sam_checkpoint(backbone: str) -> dict | None:
    spec = BACKBONES.get(backbone)
    if spec is None or not spec.has_official_checkpoint:
        return None
    return {"file": spec.checkpoint_filename, "sha256": spec.checkpoint_sha256, "url": spec.checkpoint_url,
            "get_it_with": f"nnsam3d_download_sam {backbone}"}


def _card_text(card: dict) -> str:
    cv = card["cross_validation"]
    dice = cv.get("foreground_mean_dice")
    lines = [
        f"# {card['dataset']} — {card['trainer']} ({card['plans']})",
        "",
        f"- folds: {', '.join(card['folds'])}; checkpoints: "
        + "; ".join(f"fold {fold}: {', '.join(files)}" for fold, files in card["checkpoints"].items()),
        f"- backbone: {card['backbone']}; SAM checkpoint: "
        + (f"{card['sam_checkpoint']['file']} (SHA-256 {card['sam_checkpoint']['sha256']}, "
           f"`{card['sam_checkpoint']['get_it_with']}`)" if card["sam_checkpoint"] else "none (no official SAM weights)"),
        f"- labels: {', '.join(f'{name} = {value}' for name, value in card['labels'].items())}",
        f"- channels: {', '.join(f'{index}: {name}' for index, name in card['channels'].items())}; "
        f"file ending {card['file_ending']}; target spacing {card['target_spacing']} mm (z, y, x)",
        f"- cross-validation foreground mean Dice: {'n/a' if dice is None else f'{dice:.4f}'}"
        + (f" ({cv['source']})" if cv.get("source") else ""),
        f"- postprocessing: {'postprocessing.json' if card['postprocessing'] else 'none'}",
        f"- exported {card['exported']} with nnsam3d {card['nnsam3d_version']}",
        "",
        "Use: `nnsam3d_install_model MODEL.zip`, then `nnsam3d_predict -d DATASET ...`; or without installing: "
        "`nnsam3d_predict -m MODEL.zip -i IN -o OUT`.",
        "",
    ]
    return "\n".join(lines)


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
    plans, dataset_json = checkpoint.plans, checkpoint.dataset_json
    del checkpoint
    dataset_name, trainer_plans = model_dir.parent.name, model_dir.name
    trainer, _, plans_name = trainer_plans.partition("__")
    card = {
        "format": MODEL_CARD_FORMAT,
        "dataset": dataset_name,
        "trainer": trainer,
        "plans": plans_name,
        "folds": wanted,
        "checkpoints": fold_files,
        "checkpoint_sha256": {f"fold_{fold}/{name}": _sha256(model_dir / f"fold_{fold}" / name)
                              for fold, names in fold_files.items() for name in names},
        "backbone": plans["network"]["backbone"],
        "sam_checkpoint": _sam_checkpoint(plans["network"]["backbone"]),
        "labels": dataset_json["labels"],
        "channels": dataset_json["channel_names"],
        "file_ending": dataset_json["file_ending"],
        "target_spacing": plans["target_spacing"],
        "postprocessing": (model_dir / POSTPROCESSING_FILENAME).is_file(),
        "cross_validation": _cross_validation(model_dir, fold_files),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nnsam3d_version": nnsam3d.__version__,
    }
    root = PurePosixPath(dataset_name, trainer_plans)
    with atomic_path(output_file) as temporary:
        # Checkpoints are already compressed by torch's zip format: store them.
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(str(root / MODEL_CARD_FILENAME), json.dumps(card, indent=2) + "\n")
            archive.writestr(str(root / MODEL_CARD_TEXT_FILENAME), _card_text(card))
            archive.writestr(str(root / "plans.json"), json.dumps(plans, indent=2) + "\n")
            archive.writestr(str(root / "dataset.json"), json.dumps(dataset_json, indent=2) + "\n")
            if card["postprocessing"]:
                archive.write(model_dir / POSTPROCESSING_FILENAME, str(root / POSTPROCESSING_FILENAME))
            for fold, names in fold_files.items():
                for name in names:
                    archive.write(model_dir / f"fold_{fold}" / name, str(root / f"fold_{fold}" / name),
                                  compress_type=zipfile.ZIP_STORED)
                for extra in FOLD_EXTRAS:
                    if (model_dir / f"fold_{fold}" / extra).is_file():
                        archive.write(model_dir / f"fold_{fold}" / extra, str(root / f"fold_{fold}" / extra))
    return card


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


def extract_model(source: str | os.PathLike, target_root: str | os.PathLike) -> Path:
    """Extract an exported model under ``target_root`` (``target_root/DatasetXXX_Name/TRAINER__PLANS``)
    and return that folder. The caller owns ``target_root``; nothing is checked against it."""
    source = Path(source)
    try:
        with zipfile.ZipFile(source) as archive:
            root = _model_root(archive, source)
            archive.extractall(target_root)
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelSharingError(f"{source}: cannot be read as a model zip ({error}).") from error
    return Path(target_root, *root.parts)


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


def install_model(source: str | os.PathLike, results_root: str | os.PathLike, force: bool = False) -> Path:
    """Install an exported model into ``results_root``; returns the installed model folder.

    Extracted beside its destination first and moved into place with one rename, so the
    results folder never holds a half-installed model. An existing model folder of the same
    dataset, trainer and plans is kept (``ModelSharingError``) unless ``force``: then it is
    replaced, again by renames.
    """
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    staging = results_root / f".tmp-install-{uuid.uuid4().hex[:12]}"
    try:
        extracted = extract_model(source, staging)
        relative = extracted.relative_to(staging)
        destination = results_root / relative
        if destination.exists() and not force:
            raise ModelSharingError(
                f"{destination} already exists; nothing was changed. Pass --force to replace it."
            )
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            previous = staging / "previous"
            os.replace(destination, previous)
        os.replace(extracted, destination)
        return destination
    finally:
        shutil.rmtree(staging, ignore_errors=True)
