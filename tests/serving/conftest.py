"""Fixtures of the server tests: MONAI Label's own clients (taken from its wheel at test time),
an oracle model with a known answer to clicks, and a server running it on 127.0.0.1.

The clients are the files MONAI Label ships, loaded by path, not copies: ``monailabel/client/client.py``
(its Python client) and ``MONAILabelLib/client.py`` of its 3D Slicer extension. ``pip download
--no-deps monailabel==0.8.5`` fetches the wheel once per session (pip's cache makes reruns quick);
without a network the client tests are skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnsam3d.inference.predictor import Predictor
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.serving.app import ServerOptions, create_app
from nnsam3d.serving.datastore import Datastore
from nnsam3d.serving.server_thread import running_server
from tests.interactive_stand_ins import ORACLE_CLASSES as NUM_CLASSES, PromptOracle

MONAI_LABEL_WHEEL = "monailabel==0.8.5"
PYTHON_CLIENT = "monailabel/client/client.py"
SLICER_CLIENT = "plugins/slicer/MONAILabel/MONAILabelLib/client.py"

DESCRIPTION = DatasetDescription(channel_names={"0": "CT"}, labels={"background": 0, "liver": 1, "lesion": 2},
                                 num_training=1, file_ending=".nii.gz")
AFFINE = np.array([[0.0, -1.0, 0.0, 10.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.0, -30.0], [0, 0, 0, 1.0]])
"""File axes (i, j, k) = (A→P, R→L, I→S) at 1 x 1 x 2 mm: permuted and flipped against RAS."""
BRIGHT_VOXEL = (10, 10, 6)   # inside the bright block: labelled "liver" automatically
MISSED_VOXEL = (29, 25, 7)   # inside the dim block: missed by the automatic segmentation


def phantom() -> np.ndarray:
    """(i, j, k) HU: background -100, a bright block (300 HU) and a dim one (100 HU)."""
    image = np.full((40, 36, 14), -100.0, dtype=np.float32)
    image[4:16, 4:16, 3:10] = 300.0
    image[24:34, 20:30, 4:10] = 100.0
    return image


@pytest.fixture(scope="session")
def phantom_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("phantom") / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(phantom(), AFFINE), path)
    return path


@pytest.fixture(scope="session")
def voxels():
    return {"bright": BRIGHT_VOXEL, "missed": MISSED_VOXEL}


@pytest.fixture
def oracle_predictor(make_plans) -> Predictor:
    plans = make_plans(target_spacing=(2.0, 1.0, 1.0), num_classes=NUM_CLASSES)
    return Predictor([PromptOracle()], plans, DESCRIPTION, torch.device("cpu"), use_mirroring=False)


@pytest.fixture
def start_server(tmp_path, oracle_predictor):
    """``start_server(**options)`` → (URL, Datastore): the oracle served from a thread until the test ends."""
    servers = []

    def start(predictor=None, **options):
        datastore = Datastore(tmp_path / f"datastore{len(servers)}")
        app = create_app(predictor or oracle_predictor, datastore, ServerOptions(**options))
        start.apps.append(app)
        context = running_server(app)
        url = context.__enter__()
        servers.append(context)
        return url, datastore

    start.apps = []
    yield start
    for context in servers:
        context.__exit__(None, None, None)


def _load_by_path(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def monai_label_clients(tmp_path_factory):
    """(MONAI Label's Python client module, its Slicer extension's client module), from the wheel."""
    folder = tmp_path_factory.mktemp("monailabel_wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MONAI_LABEL_WHEEL,
                        "-d", str(folder)], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as error:
        output = getattr(error, "stderr", b"") or b""
        pytest.skip(f"cannot download the {MONAI_LABEL_WHEEL} wheel for its clients (no network?): "
                    f"{output.decode(errors='replace').strip()[-300:] or error}")
    wheel = next(folder.glob("monailabel-*.whl"))
    modules = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for suffix, module_name in ((PYTHON_CLIENT, "monailabel_python_client"), (SLICER_CLIENT, "monailabel_slicer_client")):
            member = next(name for name in names if name.endswith(suffix))
            target = folder / module_name / "client.py"
            target.parent.mkdir()
            target.write_bytes(archive.read(member))
            modules.append(_load_by_path(target, module_name))
    return tuple(modules)
