"""What a training run is asked to do, and where its inputs come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nnsam3d import paths
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.preprocessing.case_storage import PreprocessedCaseStore
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans


class TrainingInputError(ValueError):
    """Something the user has to provide or fix before this training can run (message says what)."""


@dataclass
class TrainingRequest:
    """What ``nnsam3d_train`` was asked to do (one fold of one dataset).

    num_epochs, iterations_per_epoch: override the trainer's schedule (None keeps it).
    num_workers: augmentation worker processes; None chooses (0 on the CPU, several per GPU).
    time_budget_minutes: stop after the epoch in which the budget runs out, then finish normally.
    splits_file: a ``splits_final.json`` (nnU-Net's, say) to adopt as the dataset's folds.
    compile: train through ``torch.compile`` of the network (``model.network.compile_network``).
    compile_mode: ``torch.compile``'s mode with ``compile`` (``model.network.COMPILE_MODES``;
        ``reduce-overhead``: CUDA graphs).
    channels_last: the decoder's convolutions channels-last (``model.network.use_channels_last_decoder``).
    """

    dataset: str
    fold: str
    plans_name: str = DEFAULT_PLANS_NAME
    num_epochs: int | None = None
    iterations_per_epoch: int | None = None
    continue_training: bool = False
    validation_only: bool = False
    save_probabilities: bool = False
    device: str = "auto"
    sam_checkpoint: str | None = None
    seed: int = 0
    num_workers: int | None = None
    time_budget_minutes: float | None = None
    splits_file: str | None = None
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False


@dataclass(frozen=True)
class TrainingInputs:
    """What ``nnsam3d_plan_and_preprocess`` left for a run: plans, dataset.json and the cases."""

    dataset_name: str
    preprocessed_dir: Path
    plans: Plans
    description: DatasetDescription
    store: PreprocessedCaseStore
    case_ids: list[str]

    @classmethod
    def locate(cls, request: TrainingRequest) -> "TrainingInputs":
        """Read them for ``request``; a missing piece raises an error that names it and the fix."""
        dataset_name = paths.resolve_dataset_name(request.dataset)
        preprocessed_dir = paths.preprocessed_root() / dataset_name
        plans = Plans.load(preprocessed_dir / f"{request.plans_name}.json")
        description = _find_dataset_description(dataset_name, preprocessed_dir, paths.raw_root() / dataset_name)
        store = PreprocessedCaseStore(preprocessed_dir / plans.data_identifier)
        case_ids = store.case_ids()
        if not case_ids:
            raise TrainingInputError(
                f"{store.folder}: no preprocessed cases. Run nnsam3d_plan_and_preprocess "
                f"{dataset_name} first (with the same plans name, '{request.plans_name}')."
            )
        return cls(dataset_name, preprocessed_dir, plans, description, store, case_ids)


def _find_dataset_description(dataset_name: str, preprocessed_dir: Path, raw_dir: Path) -> DatasetDescription:
    """dataset.json from the preprocessed folder (preprocessing copies it there), else the raw one."""
    for folder in (preprocessed_dir, raw_dir):
        if (folder / "dataset.json").is_file():
            return DatasetDescription.from_file(folder / "dataset.json")
    raise TrainingInputError(
        f"dataset.json of {dataset_name} found neither in {preprocessed_dir} nor in the raw "
        f"folder {raw_dir}. Rerun nnsam3d_plan_and_preprocess."
    )
