"""Peak memory and time of forward+backward of vit_b encoder blocks: explicit N x N attention
against the SDPA path (``Attention3D.use_sdpa``), on the CPU.

Grid: the in-plane token grid and window of the planner's vit_b plan for a typical abdominal CT
at 24 GB (``benchmark_support.typical_abdominal_ct_plans``), with ``--depth`` token slices instead
of the plan's (31): a global block at the full grid needs a ``heads x N x N`` fp32 map of 15 GB on
the explicit path, more than this shared 2-core machine can hold or compute in reasonable time.
Window blocks' memory and time grow linearly with the number of windows, global blocks'
attention term with N^2; the file states the full-grid figures' scale.

Each measurement runs in a child process (one block, batch 1, every parameter trainable, fp32):
``peak_rss_increase_bytes`` is the child's peak resident memory (``ru_maxrss``) minus its
resident memory just before the forward pass; ``saved_tensor_bytes`` is what autograd saves
(``saved_tensors.measure_saved_tensors``: independent of machine load); times are the median of
``--repeats`` forward+backward passes after one warm-up.

    python benchmarks/attention_memory.py [--repeats 3] [--global-depth 4] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.encoder3d import EncoderBlock3D
from nnsam3d.model.layout import hw_relative_position_length, depth_relative_position_length
from nnsam3d.model.saved_tensors import measure_saved_tensors

from benchmark_support import environment, typical_abdominal_ct_plans, write_result


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vit_b_block(grid, window) -> EncoderBlock3D:
    spec = get_backbone("vit_b")
    is_global = window is None
    block = EncoderBlock3D(
        dim=spec.embed_dim, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, window=window,
        rel_pos_length_hw=hw_relative_position_length(spec.sam_grid_size, spec.sam_window_size, is_global),
        rel_pos_length_depth=depth_relative_position_length(grid[0], None if is_global else window[0]),
        adapter_dim=None,
    )
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(std=0.02)
    return block


def measure_one(grid, window, use_sdpa: bool, repeats: int) -> dict:
    """Runs in the child process."""
    torch.manual_seed(0)
    block = vit_b_block(grid, window)
    block.attn.use_sdpa = use_sdpa
    x = torch.randn(1, *grid, block.norm1.normalized_shape[0], requires_grad=True)

    def step():
        block(x).square().mean().backward()

    saved = measure_saved_tensors(block, lambda: block(x))
    before = resident_bytes()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {
        "saved_tensor_bytes": saved,
        "peak_rss_increase_bytes": max(0, peak - before),
        "seconds_median": statistics.median(times[1:]),
        "seconds_all": [round(t, 3) for t in times[1:]],
    }


def run_child(grid, window, use_sdpa: bool, repeats: int, threads: int) -> dict:
    arguments = json.dumps({"grid": grid, "window": window, "use_sdpa": use_sdpa, "repeats": repeats})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    output = subprocess.run(
        [sys.executable, __file__, "--child", arguments], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4, help="token slices of the measured grid (plan: 31)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        window = tuple(spec["window"]) if spec["window"] else None
        print(json.dumps(measure_one(tuple(spec["grid"]), window, spec["use_sdpa"], spec["repeats"])))
        return

    plans, _ = typical_abdominal_ct_plans(slices=300, gpu_memory_gb=24.0)
    grid = plans.network.token_grid
    window = plans.network.window_size
    measured_grid = (args.depth, *grid[1:])
    heads = get_backbone("vit_b").num_heads
    cases = {
        f"window block {window} on {measured_grid}": (measured_grid, window),
        f"global block on {measured_grid}": (measured_grid, None),
    }
    results = {}
    for name, (case_grid, case_window) in cases.items():
        results[name] = {
            path: run_child(list(case_grid), list(case_window) if case_window else None, path == "sdpa",
                            args.repeats, args.threads)
            for path in ("explicit", "sdpa")
        }
        for path, result in results[name].items():
            print(f"{name}, {path}: {result}", file=sys.stderr)
    tokens = 1
    for size in grid:
        tokens *= size
    write_result("attention_memory_cpu.json", {
        "what": "one vit_b encoder block, batch 1, fp32, all parameters trainable: forward+backward",
        "plan": {"gpu_memory_gb": 24, "backbone": plans.network.backbone, "patch_size": plans.network.patch_size,
                 "token_grid": grid, "window_size": window},
        "measured_grid": measured_grid,
        "full_grid_global_attention_map_bytes_fp32": heads * tokens**2 * 4,
        "note": f"measured on {args.depth} token slices instead of the plan's {grid[0]}: the explicit path's "
                "global map at the full grid (full_grid_global_attention_map_bytes_fp32) does not fit this shared "
                "machine. Window blocks scale linearly with the slices; the explicit global map with their square. "
                "Times were taken under heavy load from other jobs (load_average_before) and are only indicative; "
                "saved_tensor_bytes do not depend on load.",
        "results": results,
        "load_average_before": os.getloadavg(),
        "environment": environment(),
    })


if __name__ == "__main__":
    main()
