"""The predictor: trained 3DMedSAM networks (one per fold) → label maps for new images.

>>> predictor = Predictor.from_model_folder(paths.training_output_dir(501, "nnSAM3DTrainer", "nnsam3d_plans"))
>>> report = predictor.predict_folder("imagesTs", "predictions")           # files
>>> labels = predictor.predict_volume(ct_array, affine)                    # numpy, in memory

Per case: the preprocessor used in training (crop, normalise, resample; the same code), a
sliding window over the network grid with Gaussian weighting and batched windows
(:mod:`sliding_window`), every window through every fold's network, mirrored along all axes
(:mod:`window_prediction`), the softmax averaged; then export in the input's exact geometry
(:mod:`export`) with the model folder's postprocessing.

Memory: one class-score volume per case, (K, z, y, x) float16 on the network grid by default
(probabilities are bounded, so half precision loses nothing that matters for the argmax), plus
one float32 weight volume. Whatever the number of folds, they share this one accumulator. When
the export needs only the label map (no ``--save-probabilities``), the scores are resampled to
the case's grid and the argmax taken where they are (:mod:`device_argmax`): on a GPU, only the
int16 labels come back to the host, not K float16 volumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nnsam3d.devices import autocast_dtype_for, resolve_device
from nnsam3d.inference.case_inputs import CaseSelection, select_cases
from nnsam3d.inference.case_pipeline import CaseStages, PipelineReport, run_case_pipeline
from nnsam3d.inference.ensemble_loading import load_ensemble
from nnsam3d.inference.device_argmax import labels_in_crop_box, labels_suffice
from nnsam3d.inference.export import LabelWriter, PredictedCase, case_name_of, export_case
from nnsam3d.inference.model_folders import CHECKPOINT_FILES
from nnsam3d.inference.output_formats import check_inputs_for_format, label_writer_for, output_ending_for
from nnsam3d.inference.overlays import save_overlay
from nnsam3d.inference.postprocessing import PostprocessingRules, load_postprocessing_if_present
from nnsam3d.inference.sliding_window import sliding_window_predict
from nnsam3d.inference.window_prediction import SPATIAL_AXES, WindowEnsemble
from nnsam3d.io.geometry import ImageGeometry, from_canonical, to_canonical
from nnsam3d.io.image_io import image_io_for_dataset, read_volume
from nnsam3d.io.raw_dataset import DatasetDescription, RawCase
from nnsam3d.model.network import compile_network
from nnsam3d.schemas.plans import Plans
from nnsam3d.preprocessing.preprocessor import PreprocessedCase, preprocess_case, preprocess_case_files

OVERLAY_FOLDER = "overlays"
GPU_ACCUMULATOR_SHARE = 0.5
"""Largest share of the free GPU memory the score accumulator may take before it goes to host RAM."""


def fits_on_gpu(needed_bytes: int, reserved_bytes: int, free_bytes: int) -> bool:
    """Whether a whole-volume state of ``needed_bytes`` goes to the GPU, beside ``reserved_bytes``
    the caller holds there too, with ``free_bytes`` free: together under ``GPU_ACCUMULATOR_SHARE``."""
    return needed_bytes + reserved_bytes < GPU_ACCUMULATOR_SHARE * free_bytes


class Predictor:
    """Sliding-window prediction with an ensemble of networks (usually the folds of a model).

    networks: trained 3DMedSAM networks; they are moved to ``device`` and put into eval mode
        with deep supervision off.
    plans: the plans the networks were trained with (preprocessing and patch size).
    description: the dataset's ``dataset.json`` (labels, channels, file ending).
    device: where the networks run.
    step_size: window stride as a fraction of the patch size (0.5: windows overlap by half).
    use_mirroring: test-time augmentation, mirroring along all three axes (8x the work).

    Keyword-only options:
    batch_size: windows per network call (default: the plans' training batch size).
    postprocessing: rules applied to every label map (``from_model_folder`` loads
        ``postprocessing.json`` when present).
    accumulator_dtype: dtype of the class-score accumulator (default float16, see module).
    progress: progress bars over cases and windows.
    compile: run each network through ``torch.compile`` (``model.network.compile_network``):
        True, or one of its modes (``model.network.COMPILE_MODES``).
    device_argmax: take the argmax where the scores are when the export needs only labels
        (:mod:`device_argmax`); False always copies the probabilities to the host first (the
        reference path, for comparisons).
    """

    def __init__(
        self,
        networks: list[nn.Module],
        plans: Plans,
        description: DatasetDescription,
        device: torch.device,
        step_size: float = 0.5,
        use_mirroring: bool = True,
        *,
        batch_size: int | None = None,
        postprocessing: PostprocessingRules | None = None,
        accumulator_dtype: torch.dtype = torch.float16,
        progress: bool = False,
        compile: bool | str = False,
        device_argmax: bool = True,
    ):
        if not networks:
            raise ValueError("a Predictor needs at least one network")
        if not 0.0 < step_size <= 1.0:
            raise ValueError(f"step size must be in (0, 1], got {step_size}")
        self.device = torch.device(device)
        self.plans = plans
        self.description = description
        # dataset.json's file_ending and overwrite_image_reader_writer, as in training
        self.image_io = image_io_for_dataset(description)
        self.step_size = float(step_size)
        self.use_mirroring = bool(use_mirroring)
        self.batch_size = int(batch_size or max(1, plans.batch_size))
        self.postprocessing = postprocessing
        self.accumulator_dtype = accumulator_dtype
        self.progress = progress
        self.device_argmax = device_argmax
        self.checkpoint_files: list[Path] = []  # filled by from_model_folders, for reporting
        self.networks = []
        for network in networks:
            network.to(self.device)
            network.eval()
            if hasattr(network, "deep_supervision"):
                network.deep_supervision = False
            self.networks.append(network)
        # The compiled modules only run the windows; self.networks stay the plain networks.
        self.window_ensemble = WindowEnsemble(
            [compile_network(network, "default" if compile is True else compile) for network in self.networks]
            if compile else self.networks,
            SPATIAL_AXES if self.use_mirroring else (),
            autocast_dtype=autocast_dtype_for(self.device),
        )

    # ------------------------------------------------------------------ construction from files
    @classmethod
    def from_model_folder(
        cls,
        model_dir: str | os.PathLike,
        folds: Sequence[int | str] | None = None,
        checkpoint_name: str = CHECKPOINT_FILES["final"],
        device: str | torch.device | None = None,
        **options,
    ) -> "Predictor":
        """Load the folds of one model folder (``$nnSAM3D_results/DatasetXXX_Name/TRAINER__PLANS``).

        Slim checkpoints (frozen SAM encoder) rebuild it from their SAM file, found in
        ``options["sam_checkpoint"]`` (a path), ``nnSAM3D_sam_checkpoint`` or the SAM checkpoint
        folder and checked by its SHA-256.

        folds: e.g. ``[0, 1, 2, 3, 4]`` or ``["all"]``; None takes the cross-validation folds
            holding ``checkpoint_name``, or fold ``all`` when it is the only one
            (``model_folders.default_folds``). A missing fold or no fold at all raises ``ModelFolderError``.
        device: None or "auto" for CUDA when available. ``options``: see the class.
        ``postprocessing.json`` in ``model_dir`` is applied unless ``postprocessing`` is given.
        """
        return cls.from_model_folders([model_dir], folds, checkpoint_name, device, postprocessing_folder=model_dir, **options)

    @classmethod
    def from_model_folders(
        cls,
        model_dirs: Sequence[str | os.PathLike],
        folds: Sequence[int | str] | None = None,
        checkpoint_name: str = CHECKPOINT_FILES["final"],
        device: str | torch.device | None = None,
        postprocessing_folder: str | os.PathLike | None = None,
        sam_checkpoint: str | os.PathLike | None = None,
        **options,
    ) -> "Predictor":
        """An ensemble of several model folders (e.g. two trainers with the same plans), every
        fold of each averaged with equal weight. ``postprocessing.json`` is read from
        ``postprocessing_folder`` when given and present."""
        device = resolve_device(device)
        ensemble = load_ensemble(model_dirs, folds, checkpoint_name, sam_checkpoint)
        if "postprocessing" not in options and postprocessing_folder is not None:
            options["postprocessing"] = load_postprocessing_if_present(postprocessing_folder)
        predictor = cls(ensemble.networks, ensemble.plans, ensemble.description, device, **options)
        predictor.checkpoint_files = ensemble.checkpoint_files
        return predictor

    # ------------------------------------------------------------------ network grid
    @property
    def num_classes(self) -> int:
        return self.description.num_classes

    def volume_device(self, spatial_shape: Sequence[int], bytes_per_voxel: int, reserved_bytes: int = 0) -> torch.device:
        """Where a whole-volume state of ``bytes_per_voxel`` (score sums, an interactive session's
        scores) lives: the GPU when it fits comfortably in its free memory, else host RAM.
        reserved_bytes: what the caller will also hold on the GPU besides that state (an
        interactive session's feature cache, up to its bound), counted against the same share."""
        if self.device.type != "cuda":
            return self.device
        needed = int(np.prod(spatial_shape)) * bytes_per_voxel
        free, _total = torch.cuda.mem_get_info(self.device)
        return self.device if fits_on_gpu(needed, reserved_bytes, free) else torch.device("cpu")

    def _accumulator_device(self, spatial_shape: Sequence[int]) -> torch.device:
        """The score sums (accumulator dtype) and the weight sum (float32)."""
        return self.volume_device(spatial_shape, self.num_classes * torch.finfo(self.accumulator_dtype).bits // 8 + 4)

    def predict_probabilities(self, data: np.ndarray) -> np.ndarray:
        """Like :meth:`predict_preprocessed` but in the accumulator's dtype (float16 by default),
        which saves a float32 copy of the score volume."""
        with torch.inference_mode():
            return self.predict_scores(data).cpu().numpy()

    def predict_labels(self, loaded: PreprocessedCase) -> np.ndarray:
        """Label map (z, y, x) int16 of the case's crop box at its own spacing: the scores of
        :meth:`predict_scores` resampled and argmaxed (ties to the lower class) where they were
        accumulated (the GPU when they fit there), so that only the labels are copied to the host."""
        with torch.inference_mode():
            return labels_in_crop_box(self.predict_scores(loaded.data), loaded.properties)

    def predict_scores(self, data: np.ndarray) -> torch.Tensor:
        """(K, z, y, x) probabilities in the accumulator's dtype, on the accumulator's device (the
        GPU when they fit there): the one pass of the networks over a case that both
        :meth:`predict_probabilities` and :meth:`predict_labels` make. Call it in inference mode."""
        data = np.asarray(data)
        if data.ndim != 4 or data.shape[0] != self.description.num_channels:
            raise ValueError(
                f"expected a preprocessed image ({self.description.num_channels}, z, y, x), got shape {data.shape}"
            )
        accumulator_device = self._accumulator_device(data.shape[1:])
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        if accumulator_device.type == "cuda":
            image = image.to(self.device)
        scores = sliding_window_predict(
            image,
            self.window_ensemble,
            self.num_classes,
            self.plans.patch_size,
            step_size=self.step_size,
            batch_size=self.batch_size,
            accumulator_dtype=self.accumulator_dtype,
            accumulator_device=accumulator_device,
            compute_device=self.device,
            progress=self.progress,
        )
        # Once per case, so that a GPU's timing events neither pile up nor stall every window.
        self.window_ensemble.settle_timings()
        return scores

    def predict_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """Class probabilities of a preprocessed case.

        data: (C, z, y, x) float32 on the network grid (the preprocessor's output).
        Returns (K, z, y, x) float32: the softmax averaged over windows (Gaussian-weighted),
        mirrorings and networks.
        """
        return self.predict_probabilities(data).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ files
    def _preprocess(self, case: RawCase) -> PreprocessedCase:
        return preprocess_case_files(case.image_files, self.plans, case_id=case.case_id, image_io=self.image_io,
                                     resampling_device=self.device)

    def _predict_loaded(self, loaded: PreprocessedCase, save_probabilities: bool = True) -> PredictedCase:
        if self.device_argmax and labels_suffice(save_probabilities):
            return PredictedCase(loaded.properties, labels=self.predict_labels(loaded))
        return PredictedCase(loaded.properties, probabilities=self.predict_probabilities(loaded.data))

    def _write_case(
        self,
        predicted: PredictedCase,
        image_files: Sequence[str | os.PathLike],
        output_file: Path,
        save_probabilities: bool,
        overlay_file: str | os.PathLike | None,
        output_format: str | None = None,
    ) -> None:
        label_map = export_case(predicted, output_file, save_probabilities, self.postprocessing,
                                self.label_writer(output_format, image_files))
        if overlay_file is not None:
            # The input image again (preprocessing kept only the cropped, normalised one).
            image, geometry = read_volume(image_files[0], self.image_io)
            save_overlay(image, label_map, geometry.spacing, overlay_file,
                         label_names={v: k for k, v in self.description.labels.items()},
                         title=case_name_of(output_file))

    def predict_case_files(
        self,
        image_files: Sequence[str | os.PathLike],
        output_file: str | os.PathLike,
        *,
        save_probabilities: bool = False,
        save_overlay_to: str | os.PathLike | None = None,
    ) -> None:
        """Predict one case from its channel files (in channel order) into ``output_file``.

        save_probabilities: also write ``CASE.npz`` beside it. save_overlay_to: a PNG path for
        the contour picture. Unreadable files raise ``ImageReadError`` naming the file.
        """
        output_file = Path(output_file)
        loaded = preprocess_case_files(list(image_files), self.plans, case_id=case_name_of(output_file),
                                       image_io=self.image_io, resampling_device=self.device)
        predicted = self._predict_loaded(loaded, save_probabilities)
        del loaded
        self._write_case(predicted, image_files, output_file, save_probabilities, save_overlay_to)

    def select_cases(
        self,
        input_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        skip_existing: bool = False,
        save_probabilities: bool = False,
        num_parts: int = 1,
        part_id: int = 0,
        output_format: str | None = None,
    ) -> CaseSelection:
        """The cases of ``input_path`` this run predicts (see :meth:`predict_folder`)."""
        selection = select_cases(input_path, output_dir, self.description, skip_existing=skip_existing,
                                 save_probabilities=save_probabilities, num_parts=num_parts, part_id=part_id,
                                 output_ending=self.output_ending(output_format))
        check_inputs_for_format(selection, output_format, input_path)
        return selection

    def case_stages(
        self,
        output_dir: str | os.PathLike,
        *,
        save_probabilities: bool = False,
        save_overlays: bool = False,
        output_format: str | None = None,
    ) -> CaseStages[RawCase, PreprocessedCase, PredictedCase]:
        """Load, predict and save of one case into ``output_dir``: the stages of
        :func:`run_case_pipeline`, also run one case at a time by the Ray workers."""
        output_dir = Path(output_dir)
        ending = self.output_ending(output_format)
        return CaseStages(
            case_id=lambda case: case.case_id,
            load=self._preprocess,
            predict=lambda loaded: self._predict_loaded(loaded, save_probabilities),
            save=lambda case, predicted: self._write_case(
                predicted,
                case.image_files,
                output_dir / f"{case.case_id}{ending}",
                save_probabilities,
                output_dir / OVERLAY_FOLDER / f"{case.case_id}.png" if save_overlays else None,
                output_format,
            ),
        )

    def predict_folder(
        self,
        input_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        save_probabilities: bool = False,
        skip_existing: bool = False,
        num_parts: int = 1,
        part_id: int = 0,
        save_overlays: bool = False,
        output_format: str | None = None,
    ) -> PipelineReport:
        """Predict every case of a folder (or the single case one channel file belongs to).

        Outputs: ``output_dir/CASE<file_ending>`` in each input's exact geometry, written
        atomically; with ``save_probabilities`` also ``CASE.npz``; with ``save_overlays``
        ``output_dir/overlays/CASE.png``.
        output_format: None for the dataset's file ending, another image ending (``.mha``,
            ``.nrrd``, ``.nii.gz``, ...), or ``"dicom-seg"`` for ``CASE.dcm`` DICOM Segmentations
            (DICOM series input only; needs ``nnsam3d[dicom]``).
        ``input_path`` may also be a folder of DICOM series (see ``case_inputs``).
        skip_existing: leave out cases whose outputs exist (``--continue``).
        num_parts, part_id: predict only every ``num_parts``-th case, starting at ``part_id``
            (split a cohort over machines).
        Cases with a missing channel or an unreadable file are reported in the returned
        report's ``failures`` (by name, with the reason); the others are predicted.
        """
        selection = self.select_cases(
            input_path, output_dir, skip_existing=skip_existing, save_probabilities=save_probabilities,
            num_parts=num_parts, part_id=part_id, output_format=output_format,
        )
        report = PipelineReport.of_selection(selection)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        network_seconds_before = self.window_ensemble.network_seconds
        stages = self.case_stages(output_dir, save_probabilities=save_probabilities, save_overlays=save_overlays,
                                  output_format=output_format)
        report = run_case_pipeline(selection.cases, stages, progress=self.progress, report=report)
        # Time in the networks themselves, not in the sliding window's bookkeeping.
        report.network_seconds = self.window_ensemble.network_seconds - network_seconds_before
        return report

    def output_ending(self, output_format: str | None) -> str:
        """The ending of written label maps for ``output_format`` (see :meth:`predict_folder`)."""
        return output_ending_for(self.description, output_format)

    def label_writer(self, output_format: str | None, image_files: Sequence) -> LabelWriter:
        """How a case's canonical label map is written (see ``output_formats.label_writer_for``)."""
        return label_writer_for(self.description, self.image_io, output_format, image_files)

    # ------------------------------------------------------------------ numpy
    def predict_volume(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map of a volume held in memory, for use inside other tools.

        image: (i, j, k) or (C, i, j, k) intensities in the file's voxel order (as nibabel's
            ``get_fdata()`` returns them; channels first), in the units the model was trained
            on (e.g. Hounsfield units for CT).
        affine: 4x4 voxel → world matrix (mm, RAS+, as in NIfTI); or three voxel sizes (mm)
            along (i, j, k) for an axis-aligned RAS grid.
        Returns the label map (i, j, k) int16 on exactly the input grid, postprocessed like
        ``nnsam3d_predict`` does.
        """
        case = self.preprocess_volume(image, affine)
        label_map = self._predict_loaded(case, save_probabilities=False).label_map(self.postprocessing)
        return from_canonical(label_map, case.properties.geometry)

    def preprocess_volume(self, image: np.ndarray, affine: np.ndarray) -> PreprocessedCase:
        """The preprocessed case of a volume held in memory (arguments as :meth:`predict_volume`)."""
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != self.description.num_channels:
            raise ValueError(
                f"expected an image (i, j, k) or ({self.description.num_channels}, i, j, k) for this "
                f"{self.description.num_channels}-channel model, got shape {image.shape}"
            )
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape == (3,):
            affine = np.diag([*affine, 1.0])
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be a 4x4 matrix or three voxel sizes, got shape {affine.shape}")
        geometry = ImageGeometry(shape=tuple(int(n) for n in image.shape[1:]),
                                 affine=tuple(tuple(float(v) for v in row) for row in affine))
        channels = [to_canonical(channel.astype(np.float32, copy=False), affine) for channel in image]
        canonical = channels[0][None] if len(channels) == 1 else np.stack(channels)
        if np.may_share_memory(canonical, image):  # a grid already in canonical order: nothing was copied
            canonical = canonical.copy()
        # The canonical copy is this call's own: normalised in place rather than copied again.
        return preprocess_case(canonical, geometry, self.plans, case_id="volume", resampling_device=self.device,
                               overwrite_images=True)
