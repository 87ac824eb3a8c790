"""Registry of the ViT backbones 3DMedSAM can use, with SAM's exact hyper-parameters.

Like segment-anything's ``build_sam.py``, the variants differ only in numbers. ``vit_tiny``
is ours: same architecture, a few blocks and a narrow width, random initialisation, so that
tests and the CPU demo run in seconds. It has no official checkpoint, but a SAM-format file
with its shapes can be built with segment-anything's builder (the tests do this).
"""

from __future__ import annotations

from dataclasses import dataclass

SAM_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class BackboneSpec:
    """Hyper-parameters of one ViT image encoder.

    global_attn_indexes: zero-based blocks with global attention; the others use windows.
    feature_blocks: zero-based blocks whose outputs feed the multi-scale decoder (shallow→deep).
    sam_image_size, sam_patch_size, sam_window_size: the 2D geometry SAM was trained with; the
        pretrained position tables are sized for it and resized to the 3D token grid.
    checkpoint_filename, checkpoint_sha256: the official SAM file, None for vit_tiny. The
        SHA-256s are those the segment-anything files are verified against by other projects
        (e.g. micro-sam's ``micro_sam/util.py`` ``_CHECKSUMS``, and many download scripts agree).
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    feature_blocks: tuple[int, ...]
    mlp_ratio: float = 4.0
    sam_image_size: int = 1024
    sam_patch_size: int = 16
    sam_window_size: int = 14
    checkpoint_filename: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def checkpoint_url(self) -> str | None:
        if self.checkpoint_filename is None:
            return None
        return SAM_CHECKPOINT_BASE_URL + self.checkpoint_filename

    @property
    def sam_grid_size(self) -> int:
        """SAM's token grid side (64 for 1024 / 16)."""
        return self.sam_image_size // self.sam_patch_size

    @property
    def has_official_checkpoint(self) -> bool:
        return self.checkpoint_filename is not None


BACKBONES: dict[str, BackboneSpec] = {
    "vit_tiny": BackboneSpec(
        name="vit_tiny",
        embed_dim=96,
        depth=4,
        num_heads=3,
        global_attn_indexes=(1, 3),
        feature_blocks=(0, 1, 2, 3),
    ),
    "vit_b": BackboneSpec(
        name="vit_b",
        embed_dim=768,
        depth=12,
        num_heads=12,
        global_attn_indexes=(2, 5, 8, 11),
        feature_blocks=(2, 5, 8, 11),
        checkpoint_filename="sam_vit_b_01ec64.pth",
        checkpoint_sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": BackboneSpec(
        name="vit_l",
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        feature_blocks=(5, 11, 17, 23),
        checkpoint_filename="sam_vit_l_0b3195.pth",
        checkpoint_sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": BackboneSpec(
        name="vit_h",
        embed_dim=1280,
        depth=32,
        num_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
        feature_blocks=(7, 15, 23, 31),
        checkpoint_filename="sam_vit_h_4b8939.pth",
        checkpoint_sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)}."
        ) from None
