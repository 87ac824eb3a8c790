"""Memory of a 5-fold vit_b ensemble whose folds share one frozen SAM encoder, against each fold
holding its own copy (as before ``model.trained_weights.share_frozen_tensors``).

The model: the planner's vit_b plan for abdominal CT (``benchmark_support.typical_abdominal_ct_plans``,
adapters in all 12 blocks, encoder frozen), five slim fold checkpoints as the trainer writes
them, each with its own random trained tensors, all rebuilt from one SAM-format vit_b file of
random weights written by segment-anything's own builder (no download). The weights' values do
not change their size.

Each way is loaded by ``Predictor.from_model_folder`` in a child process of its own (so that one
does not inherit the other's memory), which reports its peak resident set size (``ru_maxrss``),
its resident set size once loaded, and the bytes of distinct parameter storages over the five
networks. "separate" runs the same code with ``share_frozen_tensors`` replaced by one that
shares nothing, which is what loading did before.

Results go to ``benchmarks/results/ensemble_memory.json``.

    python benchmarks/ensemble_memory.py [--folds 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark_support import PLANS, TRAINER, environment, load_average, typical_abdominal_ct_plans, write_result

GIB = 2**30


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def write_model(root: Path, folds: int) -> tuple[Path, Path]:
    """(model folder of ``folds`` slim vit_b folds, the SAM file they were trained on)."""
    from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
    from nnsam3d.model.backbones import get_backbone
    from nnsam3d.model.network import build_network
    from nnsam3d.model.sam_reference import build_reference_sam
    from nnsam3d.model.trained_weights import trained_state_dict

    plans, description = typical_abdominal_ct_plans(slices=300)
    sam_file = root / "sam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_reference_sam(get_backbone("vit_b")).state_dict(), sam_file)
    network = build_network(plans.network, sam_file)
    start = {name: parameter.detach().clone() for name, parameter in network.named_parameters()
             if parameter.requires_grad}
    model_dir = root / "results" / plans.dataset_name / f"{TRAINER}__{PLANS}"
    for fold in range(folds):
        generator = torch.Generator().manual_seed(fold)
        with torch.no_grad():
            for name, parameter in network.named_parameters():
                if name in start:  # each fold its own trained tensors
                    parameter.copy_(start[name] + 0.05 * torch.randn(parameter.shape, generator=generator))
        weights, source = trained_state_dict(network)
        save_checkpoint(ModelCheckpoint(TRAINER, str(fold), 250, plans.to_json(), description.to_json(), weights,
                                        sam_source=source.to_json()), model_dir / f"fold_{fold}" / "checkpoint_final.pth")
    return model_dir, sam_file


def measure(model_dir: str, sam_file: str, share: bool) -> dict:
    """In this (child) process: load the ensemble, report its memory."""
    torch.set_num_threads(1)
    from nnsam3d.inference import ensemble_loading
    from nnsam3d.inference.predictor import Predictor

    if not share:
        ensemble_loading.share_frozen_tensors = lambda network, reference: 0
    before = _resident_bytes()
    started = time.perf_counter()
    predictor = Predictor.from_model_folder(model_dir, device="cpu", sam_checkpoint=sam_file)
    seconds = time.perf_counter() - started
    gc.collect()
    storages = {p.data_ptr(): p.nbytes for network in predictor.networks for p in network.parameters()}
    all_bytes = sum(p.nbytes for network in predictor.networks for p in network.parameters())
    return {
        "networks": len(predictor.networks),
        "distinct_parameter_storages": len(storages),
        "parameter_bytes_gib": round(sum(storages.values()) / GIB, 3),
        "parameter_bytes_if_unshared_gib": round(all_bytes / GIB, 3),
        "rss_before_loading_gib": round(before / GIB, 3),
        "rss_loaded_gib": round(_resident_bytes() / GIB, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
        "load_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "SAM_FILE", "share|separate"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        model_dir, sam_file, mode = arguments.child
        print(json.dumps(measure(model_dir, sam_file, share=mode == "share")))
        return
    with tempfile.TemporaryDirectory(prefix="nnsam3d-ensemble-memory-") as root:
        started = time.perf_counter()
        model_dir, sam_file = write_model(Path(root), arguments.folds)
        print(f"model written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        runs = {}
        for mode in ("separate", "share"):
            output = subprocess.run([sys.executable, __file__, "--child", str(model_dir), str(sam_file), mode],
                                    check=True, capture_output=True, text=True).stdout
            runs[mode] = json.loads(output.strip().splitlines()[-1])
            print(f"{mode}: {runs[mode]}", file=sys.stderr)
        checkpoint_plans = torch.load(model_dir / "fold_0" / "checkpoint_final.pth", weights_only=True)["plans"]
    separate, share = runs["separate"], runs["share"]
    write_result("ensemble_memory.json", {
        **environment(),
        "load_average": load_average(),
        "command": f"python benchmarks/ensemble_memory.py --folds {arguments.folds}",
        "device": "cpu (weights only: no window is predicted)",
        "network": checkpoint_plans["network"],
        "folds": arguments.folds,
        "what": "Predictor.from_model_folder of slim vit_b folds rebuilt from one SAM file, each way in a child "
                "process; 'separate' replaces share_frozen_tensors by one that shares nothing (the loading before)",
        "separate": separate,
        "shared": share,
        "saved": {
            "parameter_gib": round(separate["parameter_bytes_gib"] - share["parameter_bytes_gib"], 3),
            "rss_loaded_gib": round(separate["rss_loaded_gib"] - share["rss_loaded_gib"], 3),
            "peak_rss_gib": round(separate["peak_rss_gib"] - share["peak_rss_gib"], 3),
        },
    })


if __name__ == "__main__":
    main()
