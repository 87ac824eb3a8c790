"""Seconds per click of an interactive session (``Predictor.interactive``).

CPU: vit_tiny at a demo-sized patch on a demo-sized CT-like volume ->
``benchmarks/results/interactive_latency_cpu.json``. CUDA (when available): vit_b at
``NetworkConfig``'s default patch, 14 classes, on a 120 x 256 x 256 volume ->
``benchmarks/results/interactive_latency_cuda.json`` (goal: under 0.5 s per click after the first).

Weights are random, the prompt branch randomised so that clicks change the prediction (speed
does not depend on the weights). Measured: the session start (the automatic prediction), the
first click (encoder and decoder of every tile containing it), further clicks in the same region
(decoders only: the encoder features are cached), and a click in a new region. No test-time
mirroring (``--mirroring`` for 8x the decoder passes). The load of the machine (``uptime``) is
recorded, since on a shared machine it matters.

    python benchmarks/interactive_latency.py [--clicks 5] [--threads N] [--mirroring] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import torch

from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.session import open_session
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network
from nnsam3d.model.prompt_encoder import prompt_channels
from nnsam3d.schemas.plans import ChannelNormalization, MemoryBudget, Plans

from benchmark_support import load_average, environment, write_result

CPU_CASE = dict(
    config=NetworkConfig(backbone="vit_tiny", num_classes=4, patch_size=(24, 64, 64), token_size=(4, 16, 16),
                         window_size=(2, 4, 4), trainable="full", decoder_channels=(16, 32, 64, 128)),
    volume_ijk=(72, 72, 28), spacing_ijk=(1.0, 1.0, 3.0),
)
CUDA_CASE = dict(
    config=NetworkConfig(backbone="vit_b", num_classes=14, adapter_blocks=tuple(range(12))),
    volume_ijk=(256, 256, 120), spacing_ijk=(1.0, 1.0, 2.0),
)


def _plans(config: NetworkConfig, spacing_zyx) -> tuple[Plans, DatasetDescription]:
    plans = Plans(
        dataset_name="Dataset999_Latency", target_spacing=tuple(spacing_zyx),
        normalization=[ChannelNormalization(channel=0, modality="CT", scheme="CTNormalization", mean=80.0, std=100.0,
                                            lower_bound=-200.0, upper_bound=400.0)],
        median_shape=(64, 128, 128),
        network=config.replace(prompt_channels=prompt_channels(config.num_classes), deep_supervision=False),
        batch_size=2, memory=MemoryBudget(target_bytes=2**30, estimate_bytes=2**28, precision="fp32"),
    )
    labels = {"background": 0, **{f"class{k}": k for k in range(1, config.num_classes)}}
    return plans, DatasetDescription(channel_names={"0": "CT"}, labels=labels, num_training=1, file_ending=".nii.gz")


def _timed(function, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _near_in_the_same_tiles(session, centre, count: int) -> list:
    """``count`` voxels next to ``centre`` whose clicks re-predict the same tiles as a click at
    ``centre`` (a voxel across a tile border would bring a new tile, and its encoder, in)."""
    tiles = session.tiles_for(voxel=tuple(int(v) for v in centre))
    offsets = sorted(itertools.product(range(-2, 3), repeat=3), key=lambda o: (sum(map(abs, o)), o))[1:]
    near = [centre + np.array(o) for o in offsets if session.tiles_for(voxel=tuple(int(v) for v in centre + o)) == tiles]
    if not near:
        near = [centre]
    return [near[i % len(near)] for i in range(count)]


def measure(case: dict, device: str, clicks: int, mirroring: bool) -> dict:
    volume_ijk, spacing_ijk = case["volume_ijk"], case["spacing_ijk"]
    plans, description = _plans(case["config"], spacing_ijk[::-1])
    torch.manual_seed(0)
    network = build_network(plans.network)
    with torch.no_grad():
        for parameter in network.prompt_encoder.parameters():
            parameter.normal_(0, 0.1)
    predictor = Predictor([network], plans, description, torch.device(device), use_mirroring=mirroring)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 30, volume_ijk).astype(np.float32)
    centre = np.array(volume_ijk) // 2
    image[tuple(slice(c - 10, c + 10) for c in centre)] += 250
    affine = np.diag([*spacing_ijk, 1.0])
    sessions = []
    start_seconds = _timed(lambda: sessions.append(open_session(predictor, image, affine)), device)
    session = sessions[0]

    def click_at(voxel, positive=True):
        session.click(voxel=tuple(int(v) for v in voxel), positive=positive, label=1)

    first = _timed(lambda: click_at(centre), device)
    calls_after_first = session.encoder_calls
    same_region = [_timed(lambda voxel=voxel, i=i: click_at(voxel, positive=i % 2 == 0), device)
                   for i, voxel in enumerate(_near_in_the_same_tiles(session, centre, clicks))]
    assert session.encoder_calls == calls_after_first, "a click in the same region re-ran the encoder"
    corner = np.array(volume_ijk) // 8
    new_region = _timed(lambda: click_at(corner), device)
    # The fast paths checked where they ran (on a GPU: device-resident scores, pinned votes, the
    # re-export of the clicked region only): the labels equal a whole export, and undoing every
    # click gives back exactly the automatic segmentation.
    assert np.array_equal(session.canonical_labels, session._export_whole()), "region export differs"
    while session.clicks:
        session.undo()
    assert np.array_equal(session.labels, session.automatic()), "undo did not restore the start"
    return {
        "config": plans.network.to_json(),
        "volume_ijk": list(volume_ijk), "spacing_ijk_mm": list(spacing_ijk),
        "network_grid": list(session.properties.shape_after_resampling),
        "tiles": len(session._windows), "mirroring": mirroring,
        "session_start_s": start_seconds,
        "first_click_s": first,
        "tiles_per_click": calls_after_first // predictor.window_ensemble.passes_per_window,
        "same_region_click_s": {"median": statistics.median(same_region), "min": min(same_region),
                                "max": max(same_region), "clicks": len(same_region)},
        "new_region_click_s": new_region,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=5, help="clicks in the same region (default 5)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (8x the decoder passes)")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        load_before = load_average()
        result = {"machine": {**environment(), "loadavg_before": load_before},
                  **measure(CPU_CASE, "cpu", args.clicks, args.mirroring)}
        result["machine"]["loadavg_after"] = load_average()
        write_result("interactive_latency_cpu.json", result)
        print(f"CPU vit_tiny: first click {result['first_click_s']:.2f} s, then "
              f"{result['same_region_click_s']['median']:.2f} s per click (load {load_before})")
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        result = {"machine": {"gpu": torch.cuda.get_device_name(), **environment(), "loadavg_before": load_average()},
                  **measure(CUDA_CASE, "cuda", args.clicks, args.mirroring)}
        write_result("interactive_latency_cuda.json", result)
        print(f"CUDA vit_b: first click {result['first_click_s']:.2f} s, then "
              f"{result['same_region_click_s']['median']:.2f} s per click (goal < 0.5 s)")


if __name__ == "__main__":
    main()
