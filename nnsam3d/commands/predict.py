"""``nnsam3d_predict -i IN -o OUT -d DATASET``: segment new cases with a trained model."""

from __future__ import annotations

import argparse
import sys

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.commands.nnunet_habits import checkpoint_choice, no_effect
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, DEFAULT_FOLDS_DESCRIPTION, ensemble_folder
from nnsam3d.model_sharing.model_zip import opened_model
from nnsam3d.inference.output_formats import DICOM_SEG
from nnsam3d.inference.predictor import Predictor
from nnsam3d.model.network import COMPILE_MODES
from nnsam3d.inference.ray_prediction import RayOptions, predict_folder_on_ray
from nnsam3d.paths import resolve_dataset_name, training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import DEFAULT_TRAINER


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_predict",
        description="Predict label maps for new cases with a trained model (its folds ensembled). Outputs are "
        "OUT/CASE<file ending> in each input's exact geometry.",
    )
    parser.add_argument("-i", dest="input", required=True,
                        help="folder of cases named CASE_XXXX<file ending> (XXXX = channel), one channel file of a case, "
                        "or a folder of DICOM series (one per subfolder, or several in one folder)")
    parser.add_argument("-o", dest="output", required=True, help="output folder (created)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", dest="dataset", help="dataset number (e.g. 501) or name (Dataset501_Liver) whose model "
                       "in $nnSAM3D_results to use (with -tr and -p)")
    model.add_argument("-m", dest="model", help="a model folder (DatasetXXX_Name/TRAINER__PLANS) or a zip written by "
                       "nnsam3d_export_model, used as is: no results folder needed")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=None,
                        help=f"with -d: trainer (default {DEFAULT_TRAINER}); several trainers with the same plans are "
                        "ensembled")
    parser.add_argument("-p", dest="plans", default=None, help=f"with -d: plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help=f"folds to ensemble, e.g. 0 1 2 3 4 or all (default: {DEFAULT_FOLDS_DESCRIPTION})")
    parser.add_argument("--checkpoint", "-chk", type=checkpoint_choice, choices=tuple(CHECKPOINT_FILES), default="final",
                        help="final: checkpoint_final.pth (default), or best: checkpoint_best.pth of each fold")
    parser.add_argument("--step-size", "-step_size", type=float, default=0.5,
                        help="sliding-window stride as a fraction of the patch (default 0.5; larger is faster, coarser)")
    parser.add_argument("--disable-tta", "--disable_tta", action="store_true",
                        help="no test-time mirroring (8x faster, usually slightly less accurate)")
    parser.add_argument("--save-probabilities", "--save_probabilities", action="store_true",
                        help="also write CASE.npz with float16 class probabilities (for ensembling)")
    parser.add_argument("--device", "-device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU (default)")
    parser.add_argument("--continue", "--continue_prediction", dest="skip_existing", action="store_true",
                        help="skip cases whose output already exists (outputs are written atomically)")
    parser.add_argument("--num-parts", "-num_parts", type=int, default=1,
                        help="split the cases into this many parts (default 1)")
    parser.add_argument("--part-id", "-part_id", type=int, default=0, help="which part this run predicts, 0..num-parts-1")
    parser.add_argument("--save-overlays", action="store_true",
                        help="also write OUT/overlays/CASE.png: predicted contours over the image in three planes")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per network call (default: the plans')")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="the SAM file a model with a frozen SAM encoder was trained on (default: looked up by "
                        "name and SHA-256 in $nnSAM3D_sam_checkpoints)")
    parser.add_argument("--output-format", default=None, metavar="FORMAT",
                        help=f"format of the written label maps: the dataset's file ending (default), another ending "
                        f"such as .nii.gz, .mha, .nrrd, or {DICOM_SEG} (DICOM Segmentation of each DICOM input series, "
                        f"CASE.dcm; needs pip install 'nnsam3d[dicom]')")
    parser.add_argument("--no-progress", "--disable_progress_bar", action="store_true", help="no progress bars")
    parser.add_argument("-npp", "-nps", type=int, metavar="N", default=argparse.SUPPRESS, help="nnU-Net's preprocessing/export process "
                        "counts: accepted for nnU-Net scripts, without effect here", action=no_effect(
                            "-npp/-nps", "one background thread reads and preprocesses the next case and one exports "
                            "the previous case while the network runs"))
    parser.add_argument("--compile", action="store_true",
                        help="run the networks through torch.compile (off by default; pays a compilation "
                        "of a minute or more at the start, helps on GPUs for many cases)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile's mode (implies --compile): reduce-overhead replays the windows' network "
                        "calls as CUDA graphs (default: default)")
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


def _run(arguments, model_dirs, postprocessing_folder):
    options = dict(
        folds=arguments.folds,
        checkpoint_name=CHECKPOINT_FILES[arguments.checkpoint],
        device=arguments.device,
        step_size=arguments.step_size,
        use_mirroring=not arguments.disable_tta,
        batch_size=arguments.batch_size,
        progress=not arguments.no_progress,
        sam_checkpoint=arguments.sam_checkpoint,
        compile=arguments.compile_mode or arguments.compile,
    )
    folder_options = dict(
        save_probabilities=arguments.save_probabilities,
        skip_existing=arguments.skip_existing,
        num_parts=arguments.num_parts,
        part_id=arguments.part_id,
        save_overlays=arguments.save_overlays,
        output_format=arguments.output_format,
    )
    run = _predict_on_ray if arguments.ray is not None else _predict_here
    return run(arguments, model_dirs, postprocessing_folder, options, folder_options)


def predict(arguments: argparse.Namespace) -> int:
    if arguments.model is not None and (arguments.trainers is not None or arguments.plans is not None):
        # -m names one model folder; silently ignoring -tr/-p would predict with another model than asked for
        raise ValueError(f"-m {arguments.model} is the model itself; -tr and -p choose a model under -d DATASET "
                         "and cannot be combined with -m")
    arguments.trainers = arguments.trainers or [DEFAULT_TRAINER]
    arguments.plans = arguments.plans or DEFAULT_PLANS_NAME
    if arguments.model is not None:
        # a zip is extracted for as long as the run takes (a Ray run ships its checkpoints to the
        # workers through the object store, so no other node needs this folder)
        with opened_model(arguments.model) as model_dir:
            report = _run(arguments, [model_dir], model_dir)
    else:
        dataset_name = resolve_dataset_name(arguments.dataset)
        model_dirs = [training_output_dir(dataset_name, trainer, arguments.plans) for trainer in arguments.trainers]
        postprocessing_folder = (
            model_dirs[0] if len(model_dirs) == 1 else ensemble_folder(dataset_name, arguments.trainers, arguments.plans)
        )
        report = _run(arguments, model_dirs, postprocessing_folder)
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


def main(argv: list[str] | None = None) -> int:
    # ValueError: bad option values (device, step size) found while setting up
    return run_command(build_parser(), predict, argv, user_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
