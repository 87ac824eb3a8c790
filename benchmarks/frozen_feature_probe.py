"""What do LiteMedSAM's frozen features know about a dataset's classes? A linear probe (issue 21).

``pretraining_benefit.py`` found the pre-trained encoder behind vit_tiny from scratch at equal CPU
time and also at equal iterations (10 and 70). Before concluding that pre-training does not help
here, this asks the question one step earlier: do the frozen features carry the classes at all?
For each feature level the encoder gives the decoder (``encode``: LiteMedSAM's stage 1, stage 2
and neck, channels last on their own grids), a multinomial logistic regression is fitted per
token on some cases' patches and scored (Dice per class of the argmax, on the feature grid) on
other cases' patches, for:

* ``pretrained``: lite_medsam with LiteMedSAM's weights, as arm (a) starts;
* ``random``: the same network with random weights, as arm (c) starts;
* ``intensity``: the input averaged over each token's footprint (the floor: what any encoder
  sees without learning anything).

Patches are the plan's patch size, one per case, centred on the case's foreground. Labels on a
feature grid: the class of the voxel at each token's centre. ``--in-plane-zoom Z`` enlarges every
patch in-plane Z times (linear interpolation of the normalised image) before the encoders, so that
anatomy appears at another scale to them (LiteMedSAM was trained on whole slices resized to
256 x 256: a brain slice of about 120 voxels at 1.5 mm fills it at zoom 2); the intensity floor
pools the enlarged patch too, and labels are read on the patch as it was at the token centres. The probe is fitted on at most
``MAX_TRAINING_TOKENS`` tokens and scored on every token of the other cases. Writes
``benchmarks/results/frozen_feature_probe_<datasets>.json``.

    python benchmarks/frozen_feature_probe.py --workdir /tmp/probe [--datasets demo brain] [--train-cases 6] [--in-plane-zoom 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from benchmark_support import environment, write_result
from pretraining_benefit import source_dataset
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from nnsam3d import paths
from nnsam3d.demo.run_demo import use_work_folders
from nnsam3d.model.network import build_network, load_sam_weights
from nnsam3d.model.sam_checkpoints import verified_lite_medsam_file
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore


def foreground_patch(data: np.ndarray, labels: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The (C, *patch) data and (*patch) labels of a patch centred on the foreground's centre
    (zero-padded where the case is smaller than the patch)."""
    centre = np.argwhere(labels > 0).mean(axis=0).round().astype(int)
    padded_data = np.zeros((data.shape[0], *(max(n, p) for n, p in zip(labels.shape, patch))), dtype=np.float32)
    padded_labels = np.zeros(padded_data.shape[1:], dtype=np.int64)
    padded_data[(slice(None), *(slice(0, n) for n in labels.shape))] = data
    padded_labels[tuple(slice(0, n) for n in labels.shape)] = labels
    start = [min(max(c - p // 2, 0), n - p) for c, p, n in zip(centre, patch, padded_labels.shape)]
    box = tuple(slice(s, s + p) for s, p in zip(start, patch))
    return padded_data[(slice(None), *box)], padded_labels[box]


def on_grid(labels: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The label at each token's centre of a grid dividing ``labels``' patch evenly."""
    index = [((np.arange(g) + 0.5) * n / g).astype(int) for g, n in zip(grid, labels.shape)]
    return labels[np.ix_(*index)]


def intensity_tokens(data: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """(*grid, C) the input averaged over each token's footprint."""
    pooled = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(data)[None], grid)[0]
    return pooled.permute(1, 2, 3, 0).numpy()


MAX_TRAINING_TOKENS = 20000
"""Tokens the probe is fitted on at most (drawn at random, fixed seed): the brain's 77-slice
patches give 100 000 tokens a case, and fitting on all of them took longer than the encoders."""


def probe(train: list[tuple[np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]],
          num_classes: int) -> dict:
    """Fit on (tokens (*grid, C), labels (*grid)) pairs of ``train``; Dice per class on ``test``."""
    x_train = np.concatenate([f.reshape(-1, f.shape[-1]) for f, _ in train])
    y_train = np.concatenate([y.ravel() for _, y in train])
    if len(y_train) > MAX_TRAINING_TOKENS:
        chosen = np.random.default_rng(0).choice(len(y_train), MAX_TRAINING_TOKENS, replace=False)
        x_train, y_train = x_train[chosen], y_train[chosen]
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(x_train), y_train)
    x_test = np.concatenate([f.reshape(-1, f.shape[-1]) for f, _ in test])
    y_test = np.concatenate([y.ravel() for _, y in test])
    predicted = model.predict(scaler.transform(x_test))
    dice = {}
    for label in range(1, num_classes):
        truth, guess = y_test == label, predicted == label
        total = truth.sum() + guess.sum()
        dice[label] = None if total == 0 else float(2 * (truth & guess).sum() / total)
    known = [d for d in dice.values() if d is not None]
    return {"dice": dice, "mean_dice": float(np.mean(known)) if known else None,
            "train_tokens": int(len(y_train)), "test_tokens": int(len(y_test)), "features": int(x_train.shape[1])}


def zoomed_in_plane(data: np.ndarray, zoom: float) -> np.ndarray:
    """(C, z, y, x) → (C, z, round(zoom y), round(zoom x)), trilinear (slices are kept)."""
    if zoom == 1:
        return data
    size = (data.shape[1], round(data.shape[2] * zoom), round(data.shape[3] * zoom))
    image = torch.from_numpy(np.ascontiguousarray(data))[None]
    return torch.nn.functional.interpolate(image, size=size, mode="trilinear", align_corners=False)[0].numpy()


def run_dataset(workdir: Path, dataset: str, train_cases: int, zoom: float = 1.0) -> dict:
    folders = use_work_folders(workdir / f"probe_{dataset}")
    source = source_dataset(dataset, folders[paths.RAW_VARIABLE])
    dataset_id = int(source.name[len("Dataset"):len("Dataset") + 3])
    plans = plan_and_preprocess(dataset_id, verify=True, backbone="lite_medsam", num_processes=2)
    store = PreprocessedCaseStore(paths.preprocessed_dataset_dir(source.name) / plans.data_identifier)
    cases = store.case_ids()
    if len(cases) <= train_cases:
        raise SystemExit(f"{source.name}: {len(cases)} cases; the probe needs more than --train-cases {train_cases}")
    patch = tuple(plans.network.patch_size)
    patches = [foreground_patch(np.asarray(store.load_data(c)), np.asarray(store.load_segmentation(c))[0], patch)
               for c in cases]
    networks = {"pretrained": build_network(plans.network.replace(trainable="adapters")),
                "random": build_network(plans.network.replace(trainable="full"))}
    load_sam_weights(networks["pretrained"], verified_lite_medsam_file())
    num_classes = plans.network.num_classes
    results = {"dataset": source.name, "patch_size": list(patch), "in_plane_zoom": zoom, "cases": len(cases),
               "train_cases": train_cases, "levels": {}}
    inputs = [zoomed_in_plane(d, zoom) for d, _ in patches]
    with torch.inference_mode():
        features = {name: [[level[0].numpy() for level in network.eval().encode(torch.from_numpy(x)[None])]
                           for x in inputs] for name, network in networks.items()}
    for level in range(len(features["pretrained"][0])):
        grid = features["pretrained"][0][level].shape[:3]
        labels = [on_grid(y, grid) for _, y in patches]
        sources = {name: [per_case[level] for per_case in features[name]] for name in networks}
        sources["intensity"] = [intensity_tokens(x, grid) for x in inputs]
        results["levels"][f"level{level}_grid{'x'.join(map(str, grid))}"] = {
            name: probe(list(zip(tokens[:train_cases], labels[:train_cases])),
                        list(zip(tokens[train_cases:], labels[train_cases:])), num_classes)
            for name, tokens in sources.items()}
        print(source.name, level, grid, {name: round(r["mean_dice"] or 0, 3)
                                         for name, r in results["levels"][list(results["levels"])[-1]].items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("./probe_benchmark"))
    parser.add_argument("--datasets", nargs="+", default=["demo"], choices=("demo", "brain"))
    parser.add_argument("--train-cases", type=int, default=6, help="cases the probe is fitted on; the rest score it")
    parser.add_argument("--in-plane-zoom", type=float, default=1.0,
                        help="enlarge every patch in-plane this many times before the encoders (default 1)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [run_dataset(args.workdir.resolve(), dataset, args.train_cases, args.in_plane_zoom)
               for dataset in args.datasets]
    zoom = "" if args.in_plane_zoom == 1 else f"_zoom{args.in_plane_zoom:g}"
    write_result(f"frozen_feature_probe_{'_'.join(args.datasets)}{zoom}.json", {"machine": environment(), "command": vars(args) | {"workdir": str(args.workdir)},
                                               "datasets": results})
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
