"""``nnsam3d_serve -d DATASET`` (or ``-m model.zip``): the annotation server that 3D Slicer's
MONAILabel extension and MONAI Label's clients speak to (``nnsam3d/serving``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnsam3d.commands.command_line import command_parser, run_command
from nnsam3d.inference.model_folders import CHECKPOINT_FILES, DEFAULT_FOLDS_DESCRIPTION
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.model_sharing.model_zip import opened_model
from nnsam3d.paths import resolve_dataset_name, training_output_dir
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME
from nnsam3d.trainers.registry import INTERACTIVE_TRAINER

TOKEN_VARIABLE = "NNSAM3D_SERVE_TOKEN"


class ServeSetupError(ValueError):
    """An option combination the server refuses to start with."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnsam3d_serve",
        description="Serve a trained model over MONAI Label's REST protocol, for 3D Slicer's MONAILabel extension "
        "and MONAI Label's clients: automatic segmentation, clicks (interactive models), and a datastore of images "
        "and corrected labels (nnsam3d_datastore_to_dataset turns them into a training dataset).",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", dest="dataset", help="dataset number or name whose model in $nnSAM3D_results to serve "
                       "(with -tr and -p)")
    model.add_argument("-m", dest="model", help="a model folder (DatasetXXX_Name/TRAINER__PLANS) or a zip written by "
                       "nnsam3d_export_model")
    parser.add_argument("-tr", dest="trainer", default=INTERACTIVE_TRAINER,
                        help=f"with -d: trainer (default {INTERACTIVE_TRAINER}, whose models take clicks)")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS_NAME, help=f"with -d: plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help=f"folds to ensemble (default: {DEFAULT_FOLDS_DESCRIPTION})")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINT_FILES), default="final")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only); any other needs --token")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000, MONAI Label's)")
    parser.add_argument("--datastore", default="nnsam3d_datastore",
                        help="datastore folder: images, saved labels, datastore.json (created; default ./nnsam3d_datastore)")
    parser.add_argument("--token", default=None,
                        help=f"require 'Authorization: Bearer TOKEN' on every request (default: ${TOKEN_VARIABLE}); "
                        "in Slicer's MONAILabel settings, give it as the password")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, help="largest request body in MiB (default 512)")
    parser.add_argument("--max-sessions", type=int, default=4,
                        help="images kept live with their encoder features (default 4; least recently used closed first)")
    parser.add_argument("--idle-minutes", type=float, default=15.0, help="close a live image after this idle time (default 15)")
    parser.add_argument("--max-waiting", type=int, default=8,
                        help="requests that may wait for the model; more are answered 503 (default 8)")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (8x faster clicks)")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window stride as a fraction of the patch (default 0.5, as nnsam3d_predict); a click "
                        "re-predicts every tile containing it, so 1.0 (tiles side by side) makes clicks up to 8x faster "
                        "at the price of tile seams")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def check_binding(host: str, token: str | None) -> None:
    """A non-loopback address only with a token."""
    from nnsam3d.serving.server_thread import is_loopback

    if not is_loopback(host) and not token:
        raise ServeSetupError(f"--host {host} makes the server reachable from other machines: give --token (or set "
                              f"${TOKEN_VARIABLE}) so that only clients with the token are answered")


def server_options(arguments: argparse.Namespace, token: str | None):
    from nnsam3d.serving.app import ServerOptions

    if not 0 < arguments.step_size <= 1:
        raise ServeSetupError(f"--step-size {arguments.step_size}: give a fraction of the patch in (0, 1]")
    if arguments.max_upload_mb <= 0 or arguments.max_sessions < 1 or arguments.max_waiting < 0 or arguments.idle_minutes <= 0:
        raise ServeSetupError("--max-upload-mb, --idle-minutes must be positive, --max-sessions at least 1, "
                              "--max-waiting at least 0")
    return ServerOptions(token=token, max_upload_bytes=int(arguments.max_upload_mb * (1 << 20)),
                         max_sessions=arguments.max_sessions, idle_seconds=arguments.idle_minutes * 60,
                         max_waiting=arguments.max_waiting)


def build_app(arguments: argparse.Namespace, model_dir: Path, token: str | None):
    """The app for ``model_dir`` over the datastore folder of ``arguments``."""
    from nnsam3d.inference.predictor import Predictor
    from nnsam3d.serving.app import create_app
    from nnsam3d.serving.datastore import Datastore

    options = server_options(arguments, token)  # checked before the model loads
    predictor = Predictor.from_model_folder(model_dir, folds=arguments.folds,
                                            checkpoint_name=CHECKPOINT_FILES[arguments.checkpoint],
                                            device=arguments.device, use_mirroring=not arguments.disable_tta,
                                            step_size=arguments.step_size)
    datastore = Datastore(arguments.datastore, name=predictor.description.name or model_dir.parent.name)
    return create_app(predictor, datastore, options)


def _import_server():
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ServeSetupError(f"the server needs {error.name}: pip install 'nnsam3d[serve]'") from None


def serve(arguments: argparse.Namespace) -> int:
    token = arguments.token or os.environ.get(TOKEN_VARIABLE) or None
    check_binding(arguments.host, token)
    _import_server()
    from nnsam3d.serving.server_thread import serve_forever

    source = arguments.model or training_output_dir(resolve_dataset_name(arguments.dataset), arguments.trainer,
                                                    arguments.plans)
    with opened_model(source) as model_dir:
        app = build_app(arguments, Path(model_dir), token)
        models = ", ".join(f"{name} ({kind})" for name, kind in app.state.models.items())
        print(f"nnsam3d_serve: serving {models} on http://{arguments.host}:{arguments.port} "
              f"(datastore {Path(arguments.datastore).resolve()}{', token required' if token else ''})", file=sys.stderr)
        serve_forever(app, arguments.host, arguments.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), serve, argv, user_errors=(ServeSetupError, ClickError))


if __name__ == "__main__":
    sys.exit(main())
