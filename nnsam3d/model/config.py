"""The configuration of one 3DMedSAM network, as the planner writes it into the plans.

All sizes are per canonical axis ``(z, y, x)``: z is the through-plane axis along which SAM's
2D patch embedding is inflated, (y, x) the in-plane axes SAM's 2D kernels were trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.layout import token_grid, window_layout

NETWORK_CONFIG_SCHEMA_VERSION = 3
"""The newest version this code reads. Version 2 added ``norm_at_full_resolution``, version 3
``checkpointed_blocks`` and ``kept_attention_blocks``; a configuration
is written with the lowest version that describes it (:meth:`NetworkConfig.to_json`), so plans and
checkpoints of the default decoder stay readable by an nnsam3d that predates the field, while one
that would build the wrong decoder refuses the others."""

TRAINABLE_MODES = ("adapters", "full", "frozen_encoder")
"""What trains in the encoder:

* ``adapters``: SAM's encoder weights frozen; the 3D patch embedding, the depth position
  embedding and depth relative-position tables, the adapters (and norms if ``train_norms``)
  train. The default when SAM weights are loaded.
* ``full``: everything trains (fine-tuning, and training from scratch).
* ``frozen_encoder``: like ``adapters`` but without adapters (ablation): ``adapter_blocks`` is
  emptied whatever it was given.
The decoder always trains.
"""


def _tuple3(value) -> tuple[int, int, int]:
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"expected three values (z, y, x), got {value}")
    return values


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build a 3DMedSAM network (weights aside).

    backbone: name in ``nnsam3d.model.backbones.BACKBONES``.
    in_channels: input channels (modalities) of the volume.
    num_classes: output classes including background.
    patch_size: training/inference window in voxels (z, y, x); a multiple of ``token_size``.
    token_size: voxels per token (z, y, x). In-plane 16 reuses SAM's kernel as is; 8 is finer.
    window_size: tokens per attention window (z, y, x) in SAM's window blocks; global blocks
        attend over all tokens.
    adapter_blocks: zero-based encoder blocks that carry a 3D adapter; always empty with
        ``trainable="frozen_encoder"``.
    adapter_dim: bottleneck width of the adapters.
    activation_checkpointing: recompute encoder blocks in backward instead of storing them.
    checkpointed_blocks: with ``activation_checkpointing``, how many encoder blocks, counted from
        the first, are recomputed; the later ones store their activations. None: all blocks. The
        planner checkpoints as few as fit its memory budget, because each checkpointed block runs
        its forward twice. The first blocks are the ones taken because their recompute comes last
        in backward, when the later blocks' stored activations are already freed. SAM ViT
        backbones only (a TinyViT checkpoints all its blocks or none).
    kept_attention_blocks: checkpointed blocks that keep their attention's output (the fused
        kernel's output and log-sum-exp) instead of recomputing it in backward: selective
        checkpointing. The output is a small share of what a block saves, and its attention the
        largest share of its forward (global blocks: nearly all of it), so the planner keeps it
        where memory is left after choosing ``checkpointed_blocks``.
    decoder_channels: channels of the decoder stages at full, 1/2, 1/4 and 1/8 resolution...,
        the last entry is the width of the necks applied to the encoder features.
    trainable: one of ``TRAINABLE_MODES``.
    train_norms: with ``adapters``, also train the encoder's LayerNorms.
    deep_supervision: also output logits at 1/2 and 1/4 resolution.
    prompt_channels: input channels of the prompt branch of interactive networks (clicks and
        prior segmentation, ``nnsam3d.model.prompt_encoder``); 0 (default): no prompt branch,
        automatic segmentation only.
    norm_at_full_resolution: InstanceNorm after the decoder's two full-resolution convolutions
        (the stem's first and level 0's), as at every other level (default). False: those two are
        convolution (with bias) and LeakyReLU only, the lighter decoder of
        ``nnSAM3DTrainer_noNormAtFullRes``: no statistics or normalisation passes over the
        largest tensors of the step, and one tensor fewer saved for backward at each.
    input_window: ``(low, high)`` of the normalised intensities that a TinyViT backbone maps
        linearly to [0, 1] before its patch embedding: LiteMedSAM was trained on images scaled to
        [0, 1] (a CT window or an MRI's percentiles); the planner sets it from the normalisation.
        None: the input as it is (the ViTs, which see the normalised intensities directly).
    """

    backbone: str = "vit_b"
    in_channels: int = 1
    num_classes: int = 2
    patch_size: tuple[int, int, int] = (32, 128, 128)
    token_size: tuple[int, int, int] = (4, 16, 16)
    window_size: tuple[int, int, int] = (2, 14, 14)
    adapter_blocks: tuple[int, ...] = ()
    adapter_dim: int = 64
    activation_checkpointing: bool = False
    checkpointed_blocks: int | None = None
    kept_attention_blocks: tuple[int, ...] = ()
    decoder_channels: tuple[int, ...] = (16, 32, 64, 128)
    trainable: str = "adapters"
    train_norms: bool = False
    deep_supervision: bool = True
    prompt_channels: int = 0
    input_window: tuple[float, float] | None = None
    norm_at_full_resolution: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _tuple3(self.patch_size))
        object.__setattr__(self, "token_size", _tuple3(self.token_size))
        object.__setattr__(self, "window_size", _tuple3(self.window_size))
        object.__setattr__(self, "adapter_blocks", tuple(sorted(int(b) for b in self.adapter_blocks)))
        object.__setattr__(self, "kept_attention_blocks", tuple(sorted({int(b) for b in self.kept_attention_blocks})))
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        spec = get_backbone(self.backbone)
        token_grid(self.patch_size, self.token_size, "patch_size", "change patch_size or token_size")
        if spec.tiny_vit is not None and self.token_size[1:] != (spec.tiny_vit.stage_strides[-1],) * 2:
            stride = spec.tiny_vit.stage_strides[-1]
            raise ValueError(
                f"{self.backbone} has in-plane tokens of {stride} voxels (its last stage's stride); "
                f"token_size must be (z, {stride}, {stride}), got {self.token_size}"
            )
        if spec.tiny_vit is not None and self.token_size[0] != 1:
            raise ValueError(f"{self.backbone} keeps every slice (no depth stride): token_size[0] must be 1")
        bad = [b for b in self.adapter_blocks if not 0 <= b < spec.depth]
        if bad:
            raise ValueError(f"adapter_blocks {bad} outside 0..{spec.depth - 1} for {self.backbone}")
        if int(self.prompt_channels) < 0:
            raise ValueError(f"prompt_channels must be at least 0, got {self.prompt_channels}")
        object.__setattr__(self, "prompt_channels", int(self.prompt_channels))
        if not isinstance(self.norm_at_full_resolution, bool):
            raise ValueError(f"norm_at_full_resolution must be true or false, got {self.norm_at_full_resolution!r}")
        if self.input_window is not None:
            low, high = (float(v) for v in self.input_window)
            if not high > low:
                raise ValueError(f"input_window must be (low, high) with high > low, got {self.input_window}")
            object.__setattr__(self, "input_window", (low, high))
        self._check_checkpointed_blocks(spec)
        self._check_kept_attention_blocks(spec)
        if self.trainable not in TRAINABLE_MODES:
            raise ValueError(f"trainable must be one of {TRAINABLE_MODES}, got '{self.trainable}'")
        if self.trainable == "frozen_encoder":
            # The ablation is defined by the absence of adapters; enforcing it here keeps the
            # network, the memory model and the saved plans from each having to remember it.
            object.__setattr__(self, "adapter_blocks", ())

    def _check_checkpointed_blocks(self, spec) -> None:
        if self.checkpointed_blocks is None:
            return
        count = int(self.checkpointed_blocks)
        if not self.activation_checkpointing:
            raise ValueError(f"checkpointed_blocks ({count}) needs activation_checkpointing true; remove it "
                             f"or set activation_checkpointing")
        if spec.tiny_vit is not None:
            raise ValueError(f"{self.backbone} checkpoints all its blocks or none: remove checkpointed_blocks")
        if not 1 <= count <= spec.depth:
            raise ValueError(f"checkpointed_blocks must be 1..{spec.depth} for {self.backbone}, got {count}")
        # All blocks is the plain checkpointed configuration: one spelling for it.
        object.__setattr__(self, "checkpointed_blocks", None if count == spec.depth else count)

    def _check_kept_attention_blocks(self, spec) -> None:
        if not self.kept_attention_blocks:
            return
        if spec.tiny_vit is not None:
            raise ValueError(f"{self.backbone} cannot keep attention outputs: remove kept_attention_blocks")
        outside = [b for b in self.kept_attention_blocks if not self.is_checkpointed(b)]
        if not self.activation_checkpointing:
            raise ValueError(f"kept_attention_blocks {outside} are not checkpointed blocks: set activation_checkpointing "
                             f"or remove them")
        if outside:
            raise ValueError(f"kept_attention_blocks {outside} are not checkpointed blocks (a stored block keeps "
                             f"everything); blocks 0..{self.checkpointed_block_count - 1} are")

    def is_checkpointed(self, block: int) -> bool:
        """Whether encoder block ``block`` (zero-based) is recomputed in backward."""
        if not self.activation_checkpointing:
            return False
        return self.checkpointed_blocks is None or block < self.checkpointed_blocks

    @property
    def checkpointed_block_count(self) -> int:
        """Encoder blocks recomputed in backward (0 without checkpointing)."""
        return sum(self.is_checkpointed(block) for block in range(get_backbone(self.backbone).depth))

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Tokens per axis (z, y, x) for one patch."""
        return token_grid(self.patch_size, self.token_size)

    @property
    def window_padding_ratio(self) -> float:
        """Tokens a window block processes per real token (1.0: the windows tile the grid);
        global blocks have no padding."""
        return window_layout(self.token_grid, self.window_size).padding_ratio

    @property
    def num_tokens(self) -> int:
        z, y, x = self.token_grid
        return z * y * x

    def replace(self, **changes) -> "NetworkConfig":
        content = asdict(self)
        content.update(changes)
        return NetworkConfig(**content)

    def to_json(self) -> dict:
        content = asdict(self)
        for key in ("patch_size", "token_size", "window_size", "adapter_blocks", "decoder_channels",
                    "kept_attention_blocks"):
            content[key] = list(content[key])
        if content["input_window"] is not None:
            content["input_window"] = list(content["input_window"])
        # Derived, not stored: the lowest version that describes this configuration.
        if self.checkpointed_blocks is not None or self.kept_attention_blocks:
            content["schema_version"] = 3
        else:
            content["schema_version"] = 1 if self.norm_at_full_resolution else 2
        return content

    @classmethod
    def from_json(cls, content: dict) -> "NetworkConfig":
        version = int(content.get("schema_version", NETWORK_CONFIG_SCHEMA_VERSION))
        if version > NETWORK_CONFIG_SCHEMA_VERSION:
            raise ValueError(
                f"network configuration has schema version {version}; this nnsam3d reads up to "
                f"{NETWORK_CONFIG_SCHEMA_VERSION}. Update nnsam3d."
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in content.items() if k in known})
