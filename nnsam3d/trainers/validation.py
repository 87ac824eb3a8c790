"""Final validation of a fold: whole validation cases through the real predictor, then metrics.

Every validation case is predicted with the sliding-window predictor (the one
``nnsam3d_predict`` uses, test-time mirroring included), exported to
``fold_K/validation/CASE<ending>`` in the original image geometry, and evaluated against the raw
``labelsTr`` into ``fold_K/validation/summary.json``. This is the number to compare trainers by;
the per-epoch pseudo-Dice is only an estimate on patches.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from nnsam3d.evaluation.evaluate_folder import evaluate_folders, format_summary_table
from nnsam3d.inference.export import export_prediction, probabilities_file_for
from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.schemas.plans import Plans
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore

VALIDATION_FOLDER = "validation"
SUMMARY_FILENAME = "summary.json"


def validate_cases(
    network: nn.Module,
    plans: Plans,
    description: DatasetDescription,
    store: PreprocessedCaseStore,
    case_ids: Sequence[str],
    reference_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    device: torch.device,
    save_probabilities: bool = False,
    message: Callable[[str], None] = print,
) -> dict:
    """Predict, export and evaluate ``case_ids``; returns the evaluation summary.

    network: the trained network (eval mode, deep supervision off while predicting; restored after).
    reference_folder: the raw dataset's ``labelsTr``.
    save_probabilities: also store per-case class probabilities (float16 ``.npz``) for ensembling.
    """
    reference_folder = Path(reference_folder)
    missing = [c for c in case_ids if not (reference_folder / f"{c}{description.file_ending}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{reference_folder}: reference label(s) missing for validation case(s) {', '.join(missing[:5])}. "
            f"Validation compares against the raw dataset's labelsTr; make the raw dataset available "
            f"(nnSAM3D_raw) and rerun with --val."
        )
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_predictions(output_folder, case_ids, description.file_ending)
    # The predictor puts the network into eval mode without deep supervision; the caller's
    # network is handed back as it came, so that validating mid-training is safe.
    deep_supervision = getattr(network, "deep_supervision", False)
    was_training = network.training
    try:
        predictor = Predictor([network], plans, description, device, step_size=0.5, use_mirroring=True)
        for index, case_id in enumerate(case_ids, start=1):
            started = time.perf_counter()
            data = store.load_data(case_id, mmap=False)
            probabilities = predictor.predict_preprocessed(data)
            export_prediction(
                probabilities,
                store.load_properties(case_id),
                output_folder / f"{case_id}{description.file_ending}",
                save_probabilities=save_probabilities,
                write_labels=predictor.label_writer(None, ()),  # the dataset's format and reader/writer
            )
            message(f"validation {index}/{len(case_ids)}: {case_id} predicted in {time.perf_counter() - started:.1f} s")
    finally:
        if hasattr(network, "deep_supervision"):
            network.deep_supervision = deep_supervision
        network.train(was_training)
    summary = evaluate_folders(
        reference_folder,
        output_folder,
        labels=description.labels,
        file_ending=description.file_ending,
        output_file=output_folder / SUMMARY_FILENAME,
        chill=True,  # the reference folder (labelsTr) also holds the other folds' cases
    )
    message("validation of whole cases:\n" + format_summary_table(summary))
    return summary


def _remove_stale_predictions(folder: Path, case_ids: Sequence[str], file_ending: str) -> None:
    """Delete predictions of cases that are no longer validation cases of this fold (a changed
    splits file), so that the summary covers exactly the current validation cases."""
    keep = set()
    for case_id in case_ids:
        keep.add(f"{case_id}{file_ending}")
        keep.add(probabilities_file_for(folder / f"{case_id}{file_ending}").name)
    for path in folder.iterdir():
        if path.is_file() and path.name not in keep and (path.name.endswith(file_ending) or path.suffix == ".npz"):
            path.unlink()
