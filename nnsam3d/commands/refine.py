"""``nnsam3d_refine -i CASE_0000.nii.gz -s INITIAL_SEG.nii.gz -c clicks.json -o OUT.nii.gz -d DATASET``:
correct a segmentation with clicks, using an interactive model (``nnSAM3DTrainer_interactive``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, DEFAULT_FOLDS_DESCRIPTION
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.interactive.session import open_session
from nnsam3d.io.geometry import ImageReadError
from nnsam3d.io.image_io import read_volume_in_file_order, write_segmentation
from nnsam3d.paths import resolve_dataset_name, training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import INTERACTIVE_TRAINER

def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_refine",
        description="Refine a segmentation with positive and negative clicks (interactive model). The output has "
        "exactly the image's geometry; voxels the clicks do not change keep the initial segmentation's labels.",
    )
    parser.add_argument("-i", dest="images", nargs="+", required=True,
                        help="the case's channel files in channel order (CASE_0000.nii.gz [CASE_0001.nii.gz ...])")
    parser.add_argument("-s", dest="segmentation", default=None,
                        help="initial segmentation on the image's grid (default: the model's automatic one)")
    parser.add_argument("-c", dest="clicks", required=True,
                        help='clicks.json: a list of {"label": NAME, "point_mm": [x, y, z], "positive": true}, '
                        "applied in order (world coordinates in mm, RAS+, as the image's affine defines them)")
    parser.add_argument("-o", dest="output", required=True, help="output label map (.nii.gz)")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset number or name")
    parser.add_argument("-tr", dest="trainer", default=INTERACTIVE_TRAINER,
                        help=f"trainer of the interactive model (default {INTERACTIVE_TRAINER})")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help=f"folds to ensemble (default: {DEFAULT_FOLDS_DESCRIPTION})")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINT_FILES), default="final")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (8x faster clicks)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def read_clicks(path: str | Path) -> list[dict]:
    """The clicks of ``clicks.json``, checked for form (labels and positions are checked by the session)."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ClickError(f"{path}: cannot read the clicks ({error})") from error
    if not isinstance(content, list) or not content:
        raise ClickError(f'{path}: expected a non-empty list of {{"label", "point_mm", "positive"}} objects')
    clicks = []
    for index, entry in enumerate(content):
        where = f"{path}, click {index}"
        if not isinstance(entry, dict) or set(entry) - {"label", "point_mm", "positive"} or "label" not in entry \
                or "point_mm" not in entry:
            raise ClickError(f'{where}: expected {{"label": NAME, "point_mm": [x, y, z], "positive": true}}, got {entry!r}')
        point = entry["point_mm"]
        if not (isinstance(point, list) and len(point) == 3 and all(isinstance(v, (int, float)) for v in point)):
            raise ClickError(f"{where}: point_mm must be three numbers [x, y, z] in mm, got {point!r}")
        positive = entry.get("positive", True)
        if not isinstance(positive, bool):
            raise ClickError(f"{where}: positive must be true or false, got {positive!r}")
        clicks.append({"label": entry["label"], "point_mm": [float(v) for v in point], "positive": positive, "where": where})
    return clicks


def _read_case(image_files: list[str], segmentation_file: str | None):
    channels, geometry = [], None
    for path in image_files:
        data, file_geometry = read_volume_in_file_order(path)
        if geometry is not None and (file_geometry.shape != geometry.shape
                                     or not np.allclose(file_geometry.affine_array, geometry.affine_array, atol=1e-4)):
            raise ImageReadError(f"{path}: its grid differs from {image_files[0]}'s")
        geometry = geometry or file_geometry
        channels.append(data)
    initial = None
    if segmentation_file is not None:
        initial, seg_geometry = read_volume_in_file_order(segmentation_file)
        if seg_geometry.shape != geometry.shape or not np.allclose(seg_geometry.affine_array, geometry.affine_array,
                                                                    atol=1e-4):
            raise ImageReadError(f"{segmentation_file}: its grid (shape {seg_geometry.shape}) differs from the "
                                 f"image's {image_files[0]} (shape {geometry.shape}) or its affine does")
        if not np.array_equal(np.rint(initial), initial):
            raise ImageReadError(f"{segmentation_file}: label map holds non-integer values")
    return np.stack(channels), geometry, initial


def refine(arguments: argparse.Namespace) -> int:
    clicks = read_clicks(arguments.clicks)
    dataset_name = resolve_dataset_name(arguments.dataset)
    predictor = Predictor.from_model_folder(
        training_output_dir(dataset_name, arguments.trainer, arguments.plans), folds=arguments.folds,
        checkpoint_name=CHECKPOINT_FILES[arguments.checkpoint], device=arguments.device,
        use_mirroring=not arguments.disable_tta,
    )
    image, geometry, initial = _read_case(arguments.images, arguments.segmentation)
    session = open_session(predictor, image, geometry.affine_array, initial)
    for click in clicks:  # every click checked before the first one runs
        try:
            session.check_click(click["point_mm"], click["label"])
        except ClickError as error:
            raise ClickError(f"{click['where']}: {error}") from None
    for click in clicks:
        session.click(click["point_mm"], positive=click["positive"], label=click["label"])
    write_segmentation(session.canonical_labels, geometry, arguments.output)
    changed = "" if initial is None else f"; {int((session.labels != initial).sum())} voxels changed"
    print(f"nnsam3d_refine: {len(clicks)} click(s) applied, {session.encoder_calls} encoder pass(es){changed}; "
          f"written to {arguments.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError: bad option values (device) found while setting up
    return run_command(build_parser(), refine, argv, user_errors=(ClickError, ValueError))

if __name__ == "__main__":
    sys.exit(main())
