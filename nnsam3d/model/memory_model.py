"""Training memory of 3DMedSAM, by arithmetic on the network's own layout.

``estimate_training_memory(config, batch_size, precision)`` walks the same shapes the network
is built and run on (:mod:`nnsam3d.model.layout`) and adds up, in bytes:

* ``parameters``: every parameter, fp32 (with mixed precision too: master weights stay fp32).
* ``gradients``: one fp32 gradient per trainable parameter.
* ``optimizer_state``: AdamW's two moments per trainable parameter, fp32.
* ``activations``: the tensors autograd saves for backward, counted once per buffer, exactly
  what :mod:`nnsam3d.model.saved_tensors` measures (see **Accuracy** below).
* ``workspace``: a stated allowance for what is alive besides the above at the peak (below).

Interactive networks: the prompt branch's parameters always count, its activations and the
clicked step's extra work with ``click_rounds > 0`` (:mod:`nnsam3d.model.prompt_layout`,
:mod:`nnsam3d.model.clicked_step_costs`).

**What is saved, and why it depends on the configuration.** In every mode the 3D patch
embedding trains, so a gradient flows back through every encoder block and every block saves
what its *input* gradient needs, even a frozen one: LayerNorm inputs and statistics, what
attention saves, the GELU input. Frozen weights only drop what their own *weight* gradients
would need (the inputs of frozen linear layers); in ``full`` mode those are saved too, and so
are the moved query copies behind trainable height/width relative-position tables. Attention
runs through SDPA's fused kernels (``attention3d.Attention3D``): no N x N map is saved, only the
widened query, key, value and output (``sdpa_head_width`` entries per token and head) and a
log-sum-exp per token and head; padding tokens of partial windows count. With activation
checkpointing a block saves only its input, and its activations come back one block at a
time during backward (added to the workspace). Adapters add their bottleneck activations.

**Precision.** ``fp32``: every saved tensor has 4 bytes per element. ``bf16``/``fp16``: CUDA
autocast rules. Linear, convolution and matmul outputs are 2 bytes, and each fp32 tensor they
consume is copied to 2 bytes (the copy is what they save); LayerNorm runs in fp32, so the
residual stream and LayerNorm outputs stay 4 bytes; SDPA's log-sum-exp is fp32; every
linear/convolution weight is held as a 2-byte copy (but for frozen weights inside checkpointed
blocks, whose copies nothing keeps).

**Accuracy.** The tests require the fp32 activation estimate to be within 1% of the saved-tensor
measurement (on the CPU, and for vit_b on the meta device); it currently matches to the byte.
The mixed-precision rules are not covered by those tests: ``benchmarks/memory_model_gpu.py``
compares the bf16 estimate with ``torch.cuda.max_memory_allocated`` on a GPU.

**Workspace allowance**: ``LIBRARY_WORKSPACE_BYTES`` for cuBLAS/cuDNN workspaces and allocator
rounding; twice the largest single activation (a gradient and its input gradient exist
together while backward passes that tensor, e.g. the widened query of the largest attention
block or the full-resolution decoder tensor); the logits at all deep-supervision levels plus
three fp32 tensors of their size for the loss (probabilities, log-probabilities, gradient);
with checkpointing, the larger of that and the recompute of the largest block (its activations
plus two of its largest tensor), which comes after the decoder's backward and does not overlap
it. ``LIBRARY_WORKSPACE_BYTES`` is CUDA's alone (``MemoryEstimate.allowance``): the peak of live
tensor storage over a whole step (``MemoryEstimate.step_peak``), tracked on the CPU and the meta
device by :mod:`nnsam3d.model.live_memory`, is tested against the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from nnsam3d.model.backbones import BackboneSpec, get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.clicked_step_costs import clicked_step_memory
from nnsam3d.model.prompt_layout import prompt_branch_for, prompt_branch_parameters, prompt_branch_saved_bytes
from nnsam3d.model.tiny_vit_costs import encoder_parameters, encoder_saved_memory
from nnsam3d.model.decoder_layout import decoder_layout
from nnsam3d.model.layout import (
    DEEP_SUPERVISION_LEVELS,
    WindowLayout,
    decoder_level_shapes,
    depth_relative_position_length,
    hw_relative_position_length,
    sdpa_head_width,
    window_layout,
)

PRECISIONS = ("fp32", "bf16", "fp16")
LIBRARY_WORKSPACE_BYTES = 128 * 2**20
CUDA_STEP_EXCESS = 0.06
"""What a CUDA step allocates beyond its live tensor storage, as a fraction of that storage
(cuDNN attention and convolution workspaces, allocator rounding). Measured by
``benchmarks/gpu_checks.py`` on an H200 (torch 2.11, cuDNN SDPA, bf16) for the planner's vit_b
plans at 8, 24 and 80 GiB: ``max_memory_allocated`` was 5.0%, 5.6% and 3.9% above ``step_peak``
plus the library workspace; 6% covers all three."""
SAFETY_MARGIN = 0.9
"""Plan (and train) to at most this share of a memory target: the estimate is a model, and the
CUDA context, allocator fragmentation and the data loader's pinned memory are not in it. Here,
not in the planner, because the interactive trainer checks its step against it too."""
FP32 = 4
INDEX = 8  # int64 indices saved by trainable table lookups
ADAPTER_KERNEL_VOXELS = 27


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's peak, by kind (see the module docstring)."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    workspace: int
    allowance: int
    """The part of ``workspace`` that is CUDA's, not live tensors: library workspaces and the
    measured excess of a CUDA step (``CUDA_STEP_EXCESS``)."""

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations + self.workspace

    @property
    def step_peak(self) -> int:
        """Peak of live tensor storage over a whole step (forward, loss, backward, AdamW): what
        ``live_memory.LiveStorageTracker`` measures; ``total`` adds the CUDA allowance."""
        return self.total - self.allowance

    def breakdown(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "activations": self.activations,
            "workspace": self.workspace,
            "total": self.total,
        }


@dataclass(frozen=True)
class _Bytes:
    """Bytes per element. low: outputs of linear/conv/matmul. cast: the copy a low-precision
    op makes of an fp32 input (0 in fp32: the fp32 tensor itself is saved, counted where it is
    produced). weight_copy: autocast's copy of each linear/conv weight."""

    low: int
    cast: int
    weight_copy: int


_PRECISION_BYTES = {
    "fp32": _Bytes(low=4, cast=0, weight_copy=0),
    "bf16": _Bytes(low=2, cast=2, weight_copy=2),
    "fp16": _Bytes(low=2, cast=2, weight_copy=2),
}


@dataclass
class _Tally:
    """Running sums: parameters (total/trainable, elements), linear/conv weight elements (for
    autocast copies), activation bytes by part, the largest single activation, and the largest
    block's activations (recomputed under checkpointing)."""

    total: int = 0
    trainable: int = 0
    matmul_weights: int = 0
    largest_tensor: int = 0
    largest_block: int = 0
    largest_block_tensor: int = 0
    freed_before_recompute: int = 0
    """Bytes saved by un-checkpointed encoder blocks after the checkpointed ones."""
    recompute_peak: int | None = None
    """Activations alive at the worst checkpointed recompute, where the encoder knows it (the
    TinyViT); None: the largest block's recompute on top of everything saved (the ViT's blocks
    are alike, so the last one, recomputed first, is as large as any)."""
    activations: dict[str, int] = field(default_factory=dict)

    def parameters(self, count: int, trainable: bool, matmul_weight: int = 0) -> None:
        self.total += count
        self.trainable += count if trainable else 0
        self.matmul_weights += matmul_weight

    def saved(self, part: str, nbytes: int) -> None:
        self.activations[part] = self.activations.get(part, 0) + nbytes


def estimate_training_memory(config: NetworkConfig, batch_size: int, precision: str = "bf16",
                             click_rounds: int = 0) -> MemoryEstimate:
    """Peak training memory of ``build_network(config)`` at ``batch_size`` (bytes, by kind).

    precision: ``fp32``, or ``bf16``/``fp16`` for autocast mixed precision (fp32 master
    weights and optimizer state, half-precision activations where autocast makes them so).
    click_rounds: 0 for a click-free step; from 1, a clicked step of ``nnSAM3DTrainer_interactive``
    (:mod:`nnsam3d.model.clicked_step_costs`). The peak does not grow with the rounds: the earlier rounds run
    without gradient and free their buffers before the prompted decode that trains.
    """
    clicked = _check_click_rounds(config, click_rounds)
    tally = _tally(config, batch_size, precision, clicked)
    parameters, gradients, optimizer_state = FP32 * tally.total, FP32 * tally.trainable, 2 * FP32 * tally.trainable
    activations = sum(tally.activations.values())
    bytes_ = _PRECISION_BYTES[precision]
    transient = _transient(config, batch_size, bytes_, tally)
    if clicked:
        extra = clicked_step_memory(config, batch_size, bytes_.low, bytes_.cast)
        transient = max(transient + extra.backward_extra, extra.forward_end)
    live_peak = parameters + gradients + optimizer_state + activations + transient
    allowance = LIBRARY_WORKSPACE_BYTES + round(CUDA_STEP_EXCESS * live_peak)
    return MemoryEstimate(parameters, gradients, optimizer_state, activations, transient + allowance, allowance)


def activation_breakdown(config: NetworkConfig, batch_size: int, precision: str = "bf16",
                         click_rounds: int = 0) -> dict[str, int]:
    """Saved-activation bytes by part of the network (``input``, ``block_N``, ``neck_N``,
    ``stem_N``, ``level_N``, ``prompt_branch``, ``weight_copies``): the sum is
    ``MemoryEstimate.activations``."""
    return dict(_tally(config, batch_size, precision, _check_click_rounds(config, click_rounds)).activations)


def _check_click_rounds(config: NetworkConfig, click_rounds: int) -> bool:
    """Whether the step is a clicked one; raises for clicks on a network without prompt branch."""
    if click_rounds < 0:
        raise ValueError(f"click_rounds must be at least 0, got {click_rounds}")
    if click_rounds and not config.prompt_channels:
        raise ValueError("click_rounds > 0 needs an interactive network (config.prompt_channels > 0)")
    return click_rounds > 0


def _tally(config: NetworkConfig, batch_size: int, precision: str, clicked: bool = False) -> _Tally:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    spec = get_backbone(config.backbone)
    bytes_ = _PRECISION_BYTES[precision]
    tally = _Tally()
    if spec.tiny_vit is None:
        _encoder(spec, config, batch_size, bytes_, tally)
    else:
        _tiny_vit_encoder(spec, config, batch_size, bytes_, tally)
    _decoder(spec, config, batch_size, bytes_, tally)
    branch = prompt_branch_for(config)
    if branch is not None:
        # Its parameters exist (and train: click-free steps give them zero gradients) in every
        # step; its activations only in clicked ones.
        counts = prompt_branch_parameters(branch)
        tally.parameters(counts.total, True, counts.matmul_weights)
        if clicked:
            tally.saved("prompt_branch", prompt_branch_saved_bytes(branch, batch_size, bytes_.low, bytes_.cast))
    # Only now is every linear/convolution weight known.
    tally.saved("weight_copies", bytes_.weight_copy * tally.matmul_weights)
    return tally


def _encoder(spec: BackboneSpec, config: NetworkConfig, batch: int, bytes_: _Bytes, tally: _Tally) -> None:
    full = config.trainable == "full"
    dim, heads = spec.embed_dim, spec.num_heads
    head_dim, hidden = dim // heads, int(dim * spec.mlp_ratio)
    grid = config.token_grid
    tokens = batch * prod(grid)
    input_voxels = batch * config.in_channels * prod(config.patch_size)

    # Patch embedding (trainable in every mode) and positions.
    patch_kernel = dim * config.in_channels * prod(config.token_size)
    tally.parameters(patch_kernel + dim, True, patch_kernel)
    tally.parameters(spec.sam_grid_size**2 * dim, full)
    tally.parameters(grid[0] * dim, True)
    # The input is saved by the patch embedding and the stem's first convolution: the same fp32
    # tensor, or two 2-byte autocast copies.
    tally.saved("input", FP32 * input_voxels if bytes_.cast == 0 else 2 * bytes_.cast * input_voxels)
    tally.largest_tensor = FP32 * input_voxels

    for index in range(spec.depth):
        is_global = index in spec.global_attn_indexes
        layout = window_layout(grid, None if is_global else config.window_size)
        part = f"block_{index}"
        depth_table = depth_relative_position_length(grid[0], None if is_global else config.window_size[0])
        hw_table = hw_relative_position_length(spec.sam_grid_size, spec.sam_window_size, is_global)
        # Autocast's 2-byte copy of a frozen weight lives only as long as an operation saves it
        # (none does inside a checkpointed block); trainable weights stay in autocast's cache.
        checkpointed = config.is_checkpointed(index)
        sam_weights_copied = full or not checkpointed
        tally.parameters(4 * dim, full or config.train_norms)
        tally.parameters(3 * dim * dim + 3 * dim + dim * dim + dim, full, 4 * dim * dim * sam_weights_copied)
        tally.parameters(2 * hidden * dim + hidden + dim, full, 2 * hidden * dim * sam_weights_copied)
        tally.parameters(2 * hw_table * head_dim, full)
        tally.parameters(depth_table * head_dim, True)
        adapter_dim = config.adapter_dim if index in config.adapter_blocks else None
        if adapter_dim is not None:
            tally.parameters(
                2 * dim * adapter_dim + 2 * adapter_dim + ADAPTER_KERNEL_VOXELS * adapter_dim + dim,
                True,
                2 * dim * adapter_dim + ADAPTER_KERNEL_VOXELS * adapter_dim,
            )
        block = _block_activations(layout, batch, tokens, dim, heads, hidden, adapter_dim, full, bytes_)
        tally.largest_tensor = max(tally.largest_tensor, block["attention"] // 4)
        if checkpointed:
            # Only the block input stays (and the attention's output where the block keeps it);
            # the rest is recomputed in backward (workspace).
            kept = _kept_attention_bytes(layout, batch, dim, heads, bytes_) if index in config.kept_attention_blocks else 0
            tally.saved(part, block["input"] + kept)
            single = max(block["attention"] // 4, *(v for k, v in block.items() if k != "attention"))  # one of q, k, v, out
            tally.largest_block = max(tally.largest_block, sum(block.values()))
            tally.largest_block_tensor = max(tally.largest_block_tensor, single)
        else:
            for nbytes in block.values():
                tally.saved(part, nbytes)
            if config.activation_checkpointing:
                # Stored after the checkpointed blocks: its backward, which frees these, runs
                # before any checkpointed block is recomputed.
                tally.freed_before_recompute += sum(block.values())

    # The last block's output is saved only by its neck (earlier outputs are the next block's
    # saved input). Under autocast every neck saves its own 2-byte copy of its feature.
    last_is_feature = spec.depth - 1 in spec.feature_blocks
    if bytes_.cast == 0:
        tally.saved("neck_inputs", FP32 * tokens * dim if last_is_feature else 0)
    else:
        tally.saved("neck_inputs", bytes_.cast * tokens * dim * len(spec.feature_blocks))


def _tiny_vit_encoder(spec: BackboneSpec, config: NetworkConfig, batch: int, bytes_: _Bytes, tally: _Tally) -> None:
    """LiteMedSAM's TinyViT (:mod:`nnsam3d.model.tiny_vit_costs`): parameters and saved bytes."""
    counts = encoder_parameters(spec.tiny_vit, config)
    tally.parameters(counts.total, False, counts.matmul_weights)
    tally.trainable += counts.trainable
    memory = encoder_saved_memory(spec.tiny_vit, config, batch, bytes_.low, bytes_.cast)
    for part, nbytes in memory.saved.items():
        tally.saved(part, nbytes)
    tally.largest_tensor = max(memory.largest_tensor, FP32 * batch * config.in_channels * prod(config.patch_size))
    tally.largest_block = memory.largest_block
    tally.largest_block_tensor = memory.largest_block_tensor
    tally.recompute_peak = memory.recompute_peak


def _kept_attention_bytes(layout: WindowLayout, batch: int, dim: int, heads: int, bytes_: _Bytes) -> int:
    """What a checkpointed block that keeps its attention stores of it: the fused kernel's output
    (``heads * padded`` rows on the widened head) and its fp32 log-sum-exp per row."""
    rows = heads * batch * layout.padded_tokens
    return bytes_.low * rows * sdpa_head_width(dim // heads, layout.window) + FP32 * rows


def _block_activations(
    layout: WindowLayout,
    batch: int,
    tokens: int,
    dim: int,
    heads: int,
    hidden: int,
    adapter_dim: int | None,
    full: bool,
    bytes_: _Bytes,
) -> dict[str, int]:
    """Bytes one encoder block saves, by tensor (``full``: SAM's weights train too)."""
    padded = batch * layout.padded_tokens
    window = layout.window
    head_dim = dim // heads
    layer_norm_stats = 2 * FP32 * tokens
    # What a linear layer saves of a LayerNorm's fp32 output: that output, or autocast's copy.
    normalised = bytes_.cast or FP32
    # SDPA's fused kernels save their widened query, key, value and output (each
    # ``heads * padded`` rows of ``sdpa_head_width`` entries) and an fp32 log-sum-exp per row.
    rows = heads * padded
    width = sdpa_head_width(head_dim, window)
    saved = {
        "input": FP32 * tokens * dim,
        "norm1": layer_norm_stats,
        "attention": 4 * bytes_.low * rows * width + FP32 * rows,
        "norm2": FP32 * tokens * dim + layer_norm_stats,
        "gelu": bytes_.low * tokens * hidden,
        "rel_pos": 0,
    }
    qkv_saved = False
    for axis in range(3):
        extent = window[axis]
        table_trains = full or axis == 0  # the depth table always trains
        embeddings = extent * extent * head_dim
        saved["rel_pos"] += bytes_.low * embeddings  # for the query gradient
        if table_trains:
            saved["rel_pos"] += INDEX * extent * extent
            # The query moved to the front of the batched product is a copy unless the moved
            # axis or every axis after it has one token (then it is a view of the qkv buffer).
            if extent > 1 and prod(window[axis + 1 :]) > 1:
                saved["rel_pos"] += bytes_.low * padded * dim
            else:
                qkv_saved = True
    saved["qkv"] = bytes_.low * 3 * padded * dim if qkv_saved else 0
    if full:
        saved["qkv_input"] = normalised * padded * dim
        saved["proj_input"] = bytes_.low * padded * dim
        saved["lin1_input"] = normalised * tokens * dim
        saved["lin2_input"] = bytes_.low * tokens * hidden
    if adapter_dim is not None:
        # In fp32 the adapter shares the LayerNorm output with lin1 (saved once).
        shares_lin1_input = full and bytes_.cast == 0
        adapter_input = 0 if shares_lin1_input else normalised * tokens * dim
        saved["adapter"] = adapter_input + 3 * bytes_.low * tokens * adapter_dim
    return saved


def _instance_norm_stats(batch: int, channels: int) -> int:
    """InstanceNorm saves per (sample, channel) mean, inverse std and the repeated weight."""
    return 3 * FP32 * batch * channels


def _conv_norm_act(batch: int, channels: int, voxels: int, bytes_: _Bytes, normed: bool = True) -> int:
    """A conv-norm-act saves the conv output (norm input) and the activated output; without the
    norm only the activated output (the in-place activation overwrites the convolution's output,
    and the convolution saves its input, not its output)."""
    if not normed:
        return bytes_.low * batch * channels * voxels
    return 2 * bytes_.low * batch * channels * voxels + _instance_norm_stats(batch, channels)


def _decoder(spec: BackboneSpec, config: NetworkConfig, batch: int, bytes_: _Bytes, tally: _Tally) -> None:
    """Every layer of :func:`decoder_layout` (the list the decoder is built from): parameters,
    and what autograd saves: a conv-norm-act its conv output and activated output, a lateral
    its input where the neck's tokens were pooled first; and each level's fused input."""
    layout = decoder_layout(config, spec.feature_dims, spec.feature_strides(config.token_size))
    necks = layout.of("neck")
    for layer in layout.layers:
        tally.parameters(layer.parameters, True, layer.weight_elements)
        voxels = prod(layer.output_shape)
        if layer.kind == "neck":
            tally.saved(f"neck_{layer.index}", _conv_norm_act(batch, layer.out_channels, voxels, bytes_))
        elif layer.kind == "lateral" and layer.input_shape != necks[layer.index].output_shape:
            # The pooled tokens, saved by the lateral convolution (the pooling saves the neck's
            # output, which the activation already holds).
            tally.saved(f"neck_{layer.index}", bytes_.low * batch * layer.in_channels * prod(layer.input_shape))
        elif layer.kind == "stem":
            # The stem's own output (resized to the level afterwards only for non-integer ratios).
            tally.saved(f"stem_{layer.index}", _conv_norm_act(batch, layer.out_channels, voxels, bytes_, layer.normed))
        elif layer.kind == "conv":
            tally.saved(f"level_{layer.index}", _conv_norm_act(batch, layer.out_channels, voxels, bytes_, layer.normed))
    for level, shape in enumerate(layout.shapes):
        # The level's input: a fresh sum, or the coarsest level's single lateral (at the
        # level's shape, directly or resized; nothing is cropped).
        level_input = bytes_.low * batch * layout.widths.levels[level] * prod(shape)
        tally.saved(f"level_{level}", level_input)
        tally.largest_tensor = max(tally.largest_tensor, level_input)


def _transient(config: NetworkConfig, batch: int, bytes_: _Bytes, tally: _Tally) -> int:
    """Live storage beyond parameters, optimiser state and saved activations at the step's peak."""
    shapes = decoder_level_shapes(config.patch_size, config.token_grid)
    logits = batch * config.num_classes * sum(prod(shapes[level]) for level in DEEP_SUPERVISION_LEVELS)
    loss = bytes_.low * logits + 3 * FP32 * logits
    decoder_and_loss = 2 * tally.largest_tensor + loss
    if not config.activation_checkpointing:
        return decoder_and_loss
    # A checkpointed block is recomputed only once the decoder's and the loss's backward are over
    # and their buffers freed: the two transients do not overlap (counting both over-estimated
    # checkpointed plans by 1.2-2x). Recomputing, a block holds its activations plus a gradient
    # and an input gradient of its largest tensor; the blocks stored after the checkpointed ones
    # (``checkpointed_blocks``) have run their backward and freed what they saved by then.
    recompute = tally.largest_block + 2 * tally.largest_block_tensor - tally.freed_before_recompute
    if tally.recompute_peak is not None:
        recompute = tally.recompute_peak - sum(tally.activations.values())
    return max(decoder_and_loss, recompute)

