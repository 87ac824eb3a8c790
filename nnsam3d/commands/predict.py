"""``nnsam3d_predict -i IN -o OUT -d DATASET``: segment new cases with a trained model."""

from __future__ import annotations

import argparse
import sys

import torch

from nnsam3d.inference.case_inputs import CaseInputError
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, ModelFolderError, ensemble_folder
from nnsam3d.inference.predictor import IncompatibleModelsError, Predictor
from nnsam3d.inference.ray_prediction import RayOptions, RayUnavailableError, predict_folder_on_ray
from nnsam3d.io.checkpoint_file import CheckpointFormatError
from nnsam3d.paths import DatasetNotFoundError, resolve_dataset_name, training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import DEFAULT_TRAINER

USER_ERRORS = (DatasetNotFoundError, ModelFolderError, CaseInputError, CheckpointFormatError, IncompatibleModelsError,
               RayUnavailableError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnsam3d_predict",
        description="Predict label maps for new cases with a trained model (its folds ensembled). Outputs are "
        "OUT/CASE<file ending> in each input's exact geometry.",
    )
    parser.add_argument("-i", dest="input", required=True,
                        help="folder of cases named CASE_XXXX<file ending> (XXXX = channel), or one channel file of a case")
    parser.add_argument("-o", dest="output", required=True, help="output folder (created)")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset number (e.g. 501) or name (Dataset501_Liver)")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=[DEFAULT_TRAINER],
                        help=f"trainer (default {DEFAULT_TRAINER}); several trainers with the same plans are ensembled")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to ensemble, e.g. 0 1 2 3 4 or all (default: every fold_* with the checkpoint)")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINT_FILES), default="final",
                        help="checkpoint_final.pth (default) or checkpoint_best.pth of each fold")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window stride as a fraction of the patch (default 0.5; larger is faster, coarser)")
    parser.add_argument("--disable-tta", action="store_true",
                        help="no test-time mirroring (8x faster, usually slightly less accurate)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write CASE.npz with float16 class probabilities (for ensembling)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU (default)")
    parser.add_argument("--continue", dest="skip_existing", action="store_true",
                        help="skip cases whose output already exists (outputs are written atomically)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the cases into this many parts (default 1)")
    parser.add_argument("--part-id", type=int, default=0, help="which part this run predicts, 0..num-parts-1")
    parser.add_argument("--save-overlays", action="store_true",
                        help="also write OUT/overlays/CASE.png: predicted contours over the image in three planes")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per network call (default: the plans')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    ray = parser.add_argument_group("Ray cluster (pip install 'nnsam3d[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="predict on a Ray cluster: cases are tasks, each worker holds the ensemble. Without ADDRESS "
                     "a local cluster on this machine; 'auto' the cluster this node joined (ray start); or HOST:PORT")
    ray.add_argument("--ray-workers", type=int, default=None,
                     help="workers to start (default: one per GPU of the cluster, else CPUs / --ray-cpus-per-worker)")
    ray.add_argument("--ray-cpus-per-worker", type=int, default=1,
                     help="CPU slots (and PyTorch threads on a CPU) each worker reserves (default 1)")
    return parser


def _predict_here(arguments, model_dirs, postprocessing_folder, options, folder_options):
    predictor = Predictor.from_model_folders(model_dirs, postprocessing_folder=postprocessing_folder, **options)
    names = {v: k for k, v in predictor.description.labels.items()}
    print(
        f"nnsam3d_predict: {len(predictor.networks)} network(s) on {predictor.device} "
        f"({', '.join(str(p) for p in predictor.checkpoint_files)}); "
        f"{'no mirroring' if arguments.disable_tta else 'mirroring on all axes'}, step size {arguments.step_size}; "
        f"postprocessing: {predictor.postprocessing.describe(names) if predictor.postprocessing else 'none'}",
        file=sys.stderr,
    )
    return predictor.predict_folder(arguments.input, arguments.output, **folder_options)


def _predict_on_ray(arguments, model_dirs, postprocessing_folder, options, folder_options):
    folds, checkpoint_name, device = options.pop("folds"), options.pop("checkpoint_name"), options.pop("device")
    progress = options.pop("progress")
    return predict_folder_on_ray(
        model_dirs, arguments.input, arguments.output,
        ray_options=RayOptions(address=None if arguments.ray == "local" else arguments.ray,
                               num_workers=arguments.ray_workers, cpus_per_worker=arguments.ray_cpus_per_worker),
        folds=folds, checkpoint_name=checkpoint_name, device=device, postprocessing_folder=postprocessing_folder,
        predictor_options=options, progress=progress,
        log=lambda message: print(f"nnsam3d_predict (ray): {message}", file=sys.stderr),
        **folder_options,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        dataset_name = resolve_dataset_name(arguments.dataset)
        options = dict(
            folds=arguments.folds,
            checkpoint_name=CHECKPOINT_FILES[arguments.checkpoint],
            device=arguments.device,
            step_size=arguments.step_size,
            use_mirroring=not arguments.disable_tta,
            batch_size=arguments.batch_size,
            progress=not arguments.no_progress,
        )
        model_dirs = [training_output_dir(dataset_name, trainer, arguments.plans) for trainer in arguments.trainers]
        postprocessing_folder = (
            model_dirs[0] if len(model_dirs) == 1 else ensemble_folder(dataset_name, arguments.trainers, arguments.plans)
        )
        folder_options = dict(
            save_probabilities=arguments.save_probabilities,
            skip_existing=arguments.skip_existing,
            num_parts=arguments.num_parts,
            part_id=arguments.part_id,
            save_overlays=arguments.save_overlays,
        )
        if arguments.ray is not None:
            report = _predict_on_ray(arguments, model_dirs, postprocessing_folder, options, folder_options)
        else:
            report = _predict_here(arguments, model_dirs, postprocessing_folder, options, folder_options)
    except (*USER_ERRORS, ValueError) as error:  # ValueError: bad option values (device, step size), malformed files
        print(f"nnsam3d_predict: error: {error}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError as error:
        print(f"nnsam3d_predict: error: the GPU ran out of memory ({error}); try --batch-size 1 or --device cpu.",
              file=sys.stderr)
        return 1
    print(
        f"nnsam3d_predict: {len(report.completed)} case(s) written to {arguments.output}"
        + (f", {len(report.skipped)} already there (--continue)" if report.skipped else "")
        + (f", {len(report.retried)} retried after their worker died" if report.retried else "")
        + f"; {report.wall_seconds:.1f} s, of which {report.network_seconds:.1f} s in the network.",
        file=sys.stderr,
    )
    if report.failures:
        print(f"nnsam3d_predict: {len(report.failures)} case(s) failed and were skipped:", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure.case_id}: {failure.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
