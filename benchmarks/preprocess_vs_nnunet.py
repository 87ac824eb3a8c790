"""Wall time of ``nnsam3d_plan_and_preprocess`` against ``nnUNetv2_plan_and_preprocess``.

Both run on the same generated CT-like datasets (mixed orientations, anisotropic spacing), each
in a fresh process (imports included), with the same number of worker processes and a clean
output folder. Two datasets:

* ``uniform_spacing``: every case has the same spacing, so nothing is resampled;
* ``mixed_spacing``: spacings vary across cases (as in real cohorts), so every case is resampled.

nnU-Net is run as its users run it: the default command, which plans and preprocesses its 2d,
3d_fullres (and, for large images, 3d_lowres) configurations. Its time for 3d_fullres alone is
recorded too, as the closest like-for-like figure. The headline ratio is the worse of the two
datasets against the default command.

nnunetv2 must not be a dependency of nnsam3d; install it into its own virtual environment::

    python3 -m venv /work/nnunet-venv
    /work/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2

and point ``--nnunet-bin`` at ``/work/nnunet-venv/bin`` (or put it on PATH). Without it, only
our time is measured.

Results: ``benchmarks/results/preprocess_vs_nnunet.json``. Goal: ratio (ours / nnU-Net) ≤ 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from benchmark_support import cpu_model  # noqa: E402
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset  # noqa: E402

GOAL_RATIO = 0.5
DATASET_IDS = {"uniform_spacing": 980, "mixed_spacing": 981}
NNUNET_COMMAND = "nnUNetv2_plan_and_preprocess"


MIXED_SPACINGS = ((2.5, 0.8, 0.8), (3.0, 0.7, 0.7), (2.0, 0.9, 0.9), (2.5, 0.75, 0.75))
"""Spacings (mm, z, y, x) cycled over the cases of the mixed-spacing dataset."""


def generate_once(raw_root: Path, spec: SyntheticDatasetSpec) -> Path:
    """Generate the dataset unless the same one was generated there before."""
    dataset = raw_root / spec.folder_name
    marker = dataset / ".benchmark_spec.json"
    wanted = json.dumps({"spec": asdict(spec)}, sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        return dataset
    shutil.rmtree(dataset, ignore_errors=True)
    started = time.perf_counter()
    generate_synthetic_dataset(raw_root, spec)
    marker.write_text(wanted)
    print(f"generated {spec.folder_name} in {time.perf_counter() - started:.0f} s", flush=True)
    return dataset


def timed(command: list[str], environment: dict[str, str], log: Path) -> float:
    """Run ``command`` to completion (output to ``log``); wall time in seconds."""
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        completed = subprocess.run(command, env=environment, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed (exit {completed.returncode}); see {log}")
    print(f"  {elapsed:.1f} s", flush=True)
    return elapsed


def fresh_folders(work: Path, names: tuple[str, ...]) -> list[Path]:
    folders = []
    for name in names:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        folders.append(folder)
    return folders


def nnunet_version(nnunet_bin: Path) -> str:
    python = nnunet_bin / "python"
    if not python.is_file():
        return "unknown"
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'), m.version('torch'))"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "unknown"




def run_scenario(
    spec: SyntheticDatasetSpec, raw: Path, work: Path, base: dict, np_text: str, nnunet_bin: Path | None
) -> dict:
    """Time nnsam3d and (if available) nnU-Net on one dataset."""
    dataset_id = str(spec.dataset_id)
    (preprocessed,) = fresh_folders(work, ("nnsam3d_preprocessed",))
    environment = {
        **base,
        "nnSAM3D_raw": str(raw),
        "nnSAM3D_preprocessed": str(preprocessed),
        "nnSAM3D_results": str(work / "nnsam3d_results"),
    }
    command = [sys.executable, "-m", "nnsam3d.commands.plan_and_preprocess", "-d", dataset_id, "-np", np_text]
    ours = timed(command, environment, work / f"nnsam3d_{spec.dataset_id}.log")
    result = {
        "dataset": {
            "spacings_zyx_mm": [list(s) for s in spec.case_spacings or (spec.spacing,)],
            "shape_jitter": spec.shape_jitter,
            "orientations": list(spec.orientations),
            "modality": spec.modality,
        },
        "nnsam3d_command": "nnsam3d_plan_and_preprocess " + " ".join(command[3:]),
        "nnsam3d_seconds": round(ours, 2),
    }
    if nnunet_bin is None:
        return result

    environment = {**base, "nnUNet_raw": str(raw), "PATH": f"{nnunet_bin}{os.pathsep}{base.get('PATH', '')}"}
    runs = {}
    for label, extra in (("default", []), ("3d_fullres_only", ["-c", "3d_fullres"])):
        preprocessed, results = fresh_folders(work, ("nnunet_preprocessed", "nnunet_results"))
        environment.update(nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results))
        command = [str(nnunet_bin / NNUNET_COMMAND), "-d", dataset_id, "-np", np_text, "-npfp", np_text, *extra]
        seconds = timed(command, environment, work / f"nnunet_{spec.dataset_id}_{label}.log")
        runs[label] = {"command": " ".join([NNUNET_COMMAND, *command[1:]]), "seconds": round(seconds, 2)}
        if label == "default":
            folders = (preprocessed / spec.folder_name).iterdir()
            runs[label]["configurations"] = sorted(
                p.name for p in folders if p.is_dir() and p.name != "gt_segmentations"
            )
    result["nnunet"] = runs
    result["ratio"] = round(ours / runs["default"]["seconds"], 3)
    result["ratio_vs_3d_fullres_only"] = round(ours / runs["3d_fullres_only"]["seconds"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=(2.5, 0.8, 0.8), metavar=("Z", "Y", "X"),
        help="spacing (mm) of the uniform-spacing dataset",
    )
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--nnunet-bin", type=Path, default=None, help="folder holding nnUNetv2_plan_and_preprocess")
    parser.add_argument("--workdir", type=Path, default=None, help="kept between runs (the dataset is reused)")
    parser.add_argument(
        "--output", type=Path, default=REPOSITORY / "benchmarks" / "results" / "preprocess_vs_nnunet.json"
    )
    args = parser.parse_args(argv)

    nnunet_bin = args.nnunet_bin
    if nnunet_bin is None and shutil.which(NNUNET_COMMAND):
        nnunet_bin = Path(shutil.which(NNUNET_COMMAND)).parent
    if nnunet_bin is not None and not (nnunet_bin / NNUNET_COMMAND).is_file():
        raise SystemExit(f"{nnunet_bin / NNUNET_COMMAND}: not found; see the module docstring to install nnunetv2.")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="preprocess_benchmark_"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("nnSAM3D_", "nnUNet_"))}
    np_text = str(args.num_processes)

    scenarios = {}
    for scenario, dataset_id in DATASET_IDS.items():
        spacings = MIXED_SPACINGS if scenario == "mixed_spacing" else None
        spec = SyntheticDatasetSpec(
            dataset_id=dataset_id,
            name="BenchmarkCT" if spacings is None else "BenchmarkCTMixed",
            num_training=args.cases,
            num_test=0,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            case_spacings=spacings,
        )
        generate_once(raw, spec)
        print(f"== {scenario}", flush=True)
        scenarios[scenario] = run_scenario(spec, raw, work, base, np_text, nnunet_bin)

    result = {
        "benchmark": "plan_and_preprocess wall time, nnsam3d vs nnU-Net v2",
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "note": "shared machine; other work may have been running",
        },
        "versions": {
            "python": platform.python_version(),
            "nnsam3d": metadata.version("nnsam3d"),
            "numpy": metadata.version("numpy"),
            "scipy": metadata.version("scipy"),
            "nibabel": metadata.version("nibabel"),
            "torch": metadata.version("torch"),
            "nnunetv2 (torch)": nnunet_version(nnunet_bin) if nnunet_bin else None,
        },
        "cases": args.cases,
        "shape_zyx_before_jitter": list(args.shape),
        "num_processes": args.num_processes,
        "scenarios": scenarios,
        "goal_ratio": GOAL_RATIO,
    }
    if nnunet_bin is not None:
        result["ratio"] = max(s["ratio"] for s in scenarios.values())
        result["goal_met"] = result["ratio"] <= GOAL_RATIO
        for name, s in scenarios.items():
            print(
                f"{name}: nnsam3d {s['nnsam3d_seconds']:.1f} s, nnU-Net {s['nnunet']['default']['seconds']:.1f} s "
                f"(3d_fullres only {s['nnunet']['3d_fullres_only']['seconds']:.1f} s): ratio {s['ratio']:.2f} "
                f"({s['ratio_vs_3d_fullres_only']:.2f} against 3d_fullres only)"
            )
        print(
            f"ratio (the worse dataset, against the default nnU-Net command): {result['ratio']:.2f}; "
            f"goal ≤ {GOAL_RATIO}"
        )
    else:
        print("nnunetv2 not found, no ratio (see the module docstring to install it)")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.output}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
