"""The annotation server: the part of MONAI Label's REST API that its clients use, over one model.

=====================================  =================================================================
``GET /info/``                         models (``AUTOMATIC_MODEL`` typed ``segmentation``,
                                       ``INTERACTIVE_MODEL`` typed ``deepedit``), label names, datastore stats
``GET /datastore/?output=all|stats|train``  the index, counts, or image/label pairs
``PUT /datastore/image?image=ID``      upload an image (multipart ``file``, ``params``); also ``PUT /datastore/``
``GET|HEAD /datastore/image?image=ID`` download (or check) an image; ``GET /datastore/image/info``
``PUT /datastore/label?image=ID&tag=final``  save a label (multipart ``label``, ``params``)
``GET /datastore/label?label=ID&tag=T``  download a label; ``HEAD`` and ``/datastore/label/info`` too
``POST /infer/MODEL?image=ID``         segment: multipart ``params`` JSON (``click_sync``); answers
                                       multipart ``params`` + label file, or ``&output=image|json``
``POST /activelearning/STRATEGY``      the next image without a final label (``first``)
``GET /auth/``, ``POST /auth/token``   whether a token is needed; the token for password = token
``GET /``                              the browser page (NiiVue; ``static/``)
=====================================  =================================================================

Shapes follow ``monailabel/endpoints/*.py`` of MONAI Label 0.8.5, so that 3D Slicer's MONAILabel
extension and MONAI Label's Python client work unchanged (tested with both). Refused requests are
answered ``{"detail": message}`` with a 4xx status (``errors``); model calls go through one
:class:`request_gate.ModelQueue`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

import nnsam3d
from nnsam3d.interactive.click_geometry import ClickError
from nnsam3d.io.geometry import ImageReadError
from nnsam3d.io.image_io import write_volume_in_file_order
from nnsam3d.serving.click_sync import check_points_inside, parse_params, reset_all, sync_clicks, wanted_clicks
from nnsam3d.serving.datastore import FINAL_TAG, Datastore
from nnsam3d.serving.errors import NotFoundError, ServingError
from nnsam3d.serving.live_sessions import DEFAULT_SESSION_CACHE_BYTES, LiveSessions
from nnsam3d.serving.multipart_response import media_type_of, multipart_body
from nnsam3d.serving.request_gate import GateMiddleware, ModelQueue, token_matches
from nnsam3d.serving.safe_names import checked_id

AUTOMATIC_MODEL = "nnsam3d"
INTERACTIVE_MODEL = "nnsam3d_interactive"
STRATEGY = "first"
STATIC_DIR = Path(__file__).with_name("static")
"""The browser page (``index.html``, ``page.js``) and the NiiVue build it uses, with its licence."""

logger = logging.getLogger("nnsam3d.serving")


@dataclass
class ServerOptions:
    """token: required as ``Authorization: Bearer`` on every request when set. max_upload_bytes:
    bound of a request body. max_sessions / idle_seconds / session_cache_bytes: live sessions
    (``live_sessions``). max_waiting: requests that may wait for the model before 503."""

    token: str | None = None
    max_upload_bytes: int = 512 << 20
    max_sessions: int = 4
    idle_seconds: float = 900.0
    session_cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES
    max_waiting: int = 8
    name: str = "nnsam3d"


def label_names_of(predictor) -> dict[str, int]:
    """The model's classes, name → value, background included, the ignore label left out."""
    description = predictor.description
    return {name: int(value) for name, value in sorted(description.labels.items(), key=lambda item: item[1])
            if value != description.ignore_label}


def is_interactive(predictor) -> bool:
    return all(getattr(network, "is_interactive", False) for network in predictor.networks)


def create_app(predictor, datastore: Datastore, options: ServerOptions | None = None) -> FastAPI:
    """The ASGI app serving ``predictor`` (an ``inference.predictor.Predictor``) over ``datastore``."""
    options = options or ServerOptions()
    interactive = is_interactive(predictor)
    label_names = label_names_of(predictor)
    models = {AUTOMATIC_MODEL: "segmentation"}
    if interactive:
        models[INTERACTIVE_MODEL] = "deepedit"
    sessions = LiveSessions(predictor, interactive, options.max_sessions, options.idle_seconds,
                            options.session_cache_bytes)
    queue = ModelQueue(options.max_waiting)
    datastore.max_upload_bytes = options.max_upload_bytes
    datastore.record_model_classes(predictor.description.labels, predictor.description.channel_names)

    app = FastAPI(title=f"{options.name} (MONAI Label protocol)", version=nnsam3d.__version__)
    app.add_middleware(GateMiddleware, token=options.token, max_body_bytes=options.max_upload_bytes)
    app.state.sessions, app.state.queue, app.state.datastore, app.state.models = sessions, queue, datastore, models

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError):
        headers = {"Retry-After": str(queue.retry_after_s)} if error.status == 503 else None
        return JSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)

    @app.exception_handler(ClickError)
    async def click_error(request: Request, error: ClickError):
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(ImageReadError)
    async def image_error(request: Request, error: ImageReadError):
        return JSONResponse({"detail": str(error)}, status_code=415)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); the server's log has the details"},
                            status_code=500)

    # ------------------------------------------------------------------ the browser page
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    # ------------------------------------------------------------------ info, auth
    def model_info(model_type: str) -> dict:
        return {"type": model_type, "labels": dict(label_names), "dimension": 3,
                "description": f"{options.name}: {'clicks refine the segmentation' if model_type == 'deepedit' else 'automatic segmentation'}",
                "config": {}}

    @app.get("/info/")
    def info():
        return {"name": options.name, "description": "nnsam3d annotation server (MONAI Label protocol)",
                "version": nnsam3d.__version__, "labels": list(label_names),
                "models": {name: model_info(kind) for name, kind in models.items()},
                "trainers": {}, "strategies": {STRATEGY: {"description": "the first image without a final label"}},
                "scoring": {}, "train_stats": {}, "datastore": datastore.status()}

    @app.get("/auth/")
    def auth():
        return {"enabled": bool(options.token), "client_id": options.name}

    @app.post("/auth/token")
    def auth_token(username: str = Form(""), password: str = Form("")):
        if not options.token:
            raise ServingError("this server runs without a token", status=404)
        if not token_matches(f"Bearer {password}", options.token):
            raise ServingError("wrong token: give the server's token as the password", status=401)
        return {"access_token": options.token, "token_type": "Bearer"}

    @app.get("/auth/token/valid")
    def auth_token_valid():
        return {}  # reached only with the right token (request_gate): Slicer asks before each session

    # ------------------------------------------------------------------ datastore
    @app.get("/datastore/")
    def datastore_listing(output: Optional[str] = None):
        if output == "all":
            return datastore.to_json()
        if output == "train":
            return datastore.datalist()
        if output in (None, "stats"):
            return datastore.status()
        raise ServingError(f"output {output!r} is not one of all, stats, train")

    def add_image(image: Optional[str], params: str, file: UploadFile):
        info = _json_object(params, "params")
        # A live session of an earlier upload under this id ends at the next infer (its version changed).
        return {"image": datastore.add_image(image, file.filename, file.file, info)}

    @app.put("/datastore/image")
    def upload_image(image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...)):
        return add_image(image, params, file)

    @app.put("/datastore/", include_in_schema=False)
    def upload_image_deprecated(image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...)):
        return add_image(image, params, file)

    @app.get("/datastore/image")
    def download_image(image: str):
        path = datastore.image_path(checked_id(image))
        return FileResponse(path, media_type=media_type_of(path.name), filename=path.name)

    @app.head("/datastore/image")
    def check_image(image: str):
        datastore.image_path(checked_id(image))
        return {}

    @app.get("/datastore/image/info")
    def image_info(image: str):
        return datastore.image_info(checked_id(image))

    @app.put("/datastore/label")
    def save_label(image: str, params: str = Form("{}"), tag: str = FINAL_TAG, label: UploadFile = File(...)):
        info = _json_object(params, "params")
        label_id = datastore.save_label(checked_id(image), label.filename, label.file, tag or FINAL_TAG,
                                        {"params": info} if info else {})
        return {"image": image, "label": label_id}

    @app.get("/datastore/label")
    def download_label(label: str, tag: str = FINAL_TAG):
        path = datastore.label_path(checked_id(label, "label id"), tag)
        return FileResponse(path, media_type=media_type_of(path.name), filename=path.name)

    @app.head("/datastore/label")
    def check_label(image: str, tag: str = FINAL_TAG):
        datastore.label_path(checked_id(image), tag)
        return {}

    @app.get("/datastore/label/info")
    def label_info(label: str, tag: str = FINAL_TAG):
        return datastore.label_info(checked_id(label, "label id"), tag)

    @app.post("/activelearning/{strategy}")
    def next_sample(strategy: str):
        if strategy != STRATEGY:
            raise NotFoundError(f"unknown strategy {strategy!r}; this server has: {STRATEGY}")
        index = datastore.to_json()["objects"]
        for image_id, entry in index.items():
            if FINAL_TAG not in entry["labels"]:
                return {"id": image_id, **datastore.image_info(image_id)}
        raise NotFoundError("every image of the datastore has a final label; upload more images")

    # ------------------------------------------------------------------ infer
    @app.post("/infer/{model}")
    def infer(model: str, image: str = "", session_id: str = "", params: str = Form("{}"),
              file: UploadFile = File(None), label: UploadFile = File(None), output: Optional[str] = None):
        started = time.perf_counter()
        if model not in models:
            raise NotFoundError(f"unknown model {model!r}; this server has: {', '.join(models)}")
        if output not in (None, "", "all", "image", "json"):
            raise ServingError(f"output {output!r} is not one of all, image, json")
        if file is not None and getattr(file, "filename", None):
            raise ServingError("send the image to the datastore first (PUT /datastore/image), then infer with ?image=ID")
        image_id = checked_id(image)
        request = parse_params(params, label_names)
        path = datastore.image_path(image_id)
        version = datastore.image_version(image_id)
        with queue.turn():
            live = sessions.get(image_id, version, path)
            check_points_inside(request, live.geometry.shape)
            clicks = 0
            if model == AUTOMATIC_MODEL:
                labels = live.automatic
            else:
                if request.reset_state:
                    reset_all(live)
                clicks = sync_clicks(live, wanted_clicks(request, live, label_names))
                labels = live.labels
            geometry = live.geometry
        content = _encoded_labels(labels, geometry, request.result_extension, request.result_dtype)
        # A name of its own per answer: MONAI Label's clients save each answer under its name.
        filename = f"{image_id}_{model}_{uuid.uuid4().hex[:12]}{request.result_extension}"
        answer = {"label_names": dict(label_names), "model": model, "image": image_id, "clicks_run": clicks,
                  "latencies": {"total": round(time.perf_counter() - started, 4)}}
        if output == "json":
            return answer
        if output == "image":
            return Response(content, media_type=media_type_of(filename),
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body, content_type = multipart_body(answer, filename, content, media_type_of(filename))
        return Response(body, media_type=content_type)

    return app


def _json_object(text: str, what: str) -> dict:
    try:
        content = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        raise ServingError(f"{what} is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(content, dict):
        raise ServingError(f"{what} must be a JSON object")
    return content


def _encoded_labels(labels: np.ndarray, geometry, extension: str, dtype: str) -> bytes:
    """The label map (file order) written as a file of ``extension`` and ``dtype``."""
    limits = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    if limits is not None and labels.size and (labels.min() < limits.min or labels.max() > limits.max):
        raise ServingError(f"result_dtype {dtype} cannot hold the label values (up to {int(labels.max())})")
    with tempfile.TemporaryDirectory(prefix="nnsam3d-serve-") as folder:
        path = Path(folder) / f"result{extension}"
        write_volume_in_file_order(labels.astype(dtype), geometry, path)
        return path.read_bytes()
