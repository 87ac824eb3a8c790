"""Bad datasets are refused with and without ``--verify_dataset_integrity``: one clean message
naming the file and the problem, exit status 1, no traceback, nothing written. ``--debug`` (or
NNSAM3D_DEBUG=1) adds the traceback; every command has ``--version`` and ``--debug``."""

from __future__ import annotations

import gzip
import importlib
import pkgutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nnsam3d
import nnsam3d.commands
from nnsam3d.commands.command_line import DEBUG_VARIABLE
from nnsam3d.commands.plan_and_preprocess import main as plan_main

CASE = "syntheticct_001"
IMAGE = f"imagesTr/{CASE}_0000.nii.gz"
LABEL = f"labelsTr/{CASE}.nii.gz"


def rewrite(path: Path, change) -> None:
    """Apply ``change(data, affine) -> (data, affine)`` to a NIfTI file in place."""
    image = nib.load(path)
    data, affine = change(np.asarray(image.dataobj).astype(np.float32), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def write_zero_spacing(path: Path) -> None:
    """Rewrite ``path`` with an sform whose second voxel axis has length 0 (zero spacing), the
    kind of header nibabel reads without complaint."""
    image = nib.load(path)
    raw = bytearray(nib.Nifti1Image(np.asarray(image.dataobj), image.affine).to_bytes())
    for row in range(3):  # srow_x, srow_y, srow_z at byte 280, 296, 312
        struct.pack_into("<f", raw, 280 + 16 * row + 4, 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))


def _set_voxels(value):
    def change(data, affine):
        data[2:4, 5:9, 5:9] = value
        return data, affine
    return change


def _scale_first_axis(data, affine):
    affine[:3, 0] *= 1.5
    return data, affine


def _flip_first_axis(data, affine):
    affine[:3, 0] *= -1  # same voxels, mirrored in the world: the label no longer lies on the image
    return data, affine


def _symlink_loop(dataset):
    path = dataset / IMAGE
    path.unlink()
    path.symlink_to(path.name)


BREAKAGES = {
    "NaN voxels": (lambda d: rewrite(d / IMAGE, _set_voxels(np.nan)), IMAGE, "NaN"),
    "infinite voxels": (lambda d: rewrite(d / IMAGE, _set_voxels(np.inf)), IMAGE, "infinite"),
    "undeclared label": (lambda d: rewrite(d / LABEL, _set_voxels(7)), LABEL, "not declared"),
    "label spacing": (lambda d: rewrite(d / LABEL, _scale_first_axis), LABEL, "spacing"),
    "label orientation": (lambda d: rewrite(d / LABEL, _flip_first_axis), LABEL, "affine disagrees"),
    "symlink loop": (_symlink_loop, IMAGE, "symbolic link loop"),
    "zero spacing": (lambda d: write_zero_spacing(d / IMAGE), IMAGE, "invalid voxel grid"),
    "invalid dataset.json": (lambda d: (d / "dataset.json").write_text('{"labels": {'), "dataset.json",
                             "not valid JSON"),
}


@pytest.mark.parametrize("verify", [False, True], ids=["default", "verify_dataset_integrity"])
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_dataset_is_refused_naming_the_file(small_raw_dataset, nnsam3d_folders, capsys, breakage, verify):
    damage, file, problem = BREAKAGES[breakage]
    damage(small_raw_dataset)
    argv = ["-d", "990", "--backbone", "vit_tiny", "-np", "1"] + (["--verify_dataset_integrity"] if verify else [])

    assert plan_main(argv) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    message = next(line for line in stderr.splitlines() if file in line and problem in line)
    assert str(small_raw_dataset / file) in message or str(small_raw_dataset.name) in stderr
    assert list(nnsam3d_folders.preprocessed.iterdir()) == []


def test_the_same_dataset_unbroken_is_accepted_without_the_flag(small_raw_dataset, nnsam3d_folders):
    assert plan_main(["-d", "990", "--backbone", "vit_tiny", "-np", "1"]) == 0
    assert len(list((nnsam3d_folders.preprocessed / small_raw_dataset.name / "nnsam3d_plans_3d").glob("syntheticct_*.json"))) == 3


def test_a_file_replaced_after_fingerprinting_is_checked_on_the_rerun(small_raw_dataset, nnsam3d_folders, capsys):
    assert plan_main(["-d", "990", "--backbone", "vit_tiny", "-np", "1"]) == 0
    rewrite(small_raw_dataset / IMAGE, _set_voxels(np.nan))
    assert plan_main(["-d", "990", "--backbone", "vit_tiny", "-np", "1"]) == 1
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(small_raw_dataset, capsys, monkeypatch, how):
    (small_raw_dataset / "dataset.json").write_text("{")
    argv = ["-d", "990", "-np", "1"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv(DEBUG_VARIABLE, "1")
    assert plan_main(argv) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and "not valid JSON" in stderr


def _command_modules():
    names = [m.name for m in pkgutil.iter_modules(nnsam3d.commands.__path__) if m.name != "command_line"]
    return [importlib.import_module(f"nnsam3d.commands.{name}") for name in names]


def test_every_command_has_version_and_debug(capsys):
    modules = [module for module in _command_modules() if hasattr(module, "main")]
    assert len(modules) >= 7
    for module in modules:
        with pytest.raises(SystemExit) as caught:
            module.main(["--version"])
        assert caught.value.code == 0
        assert capsys.readouterr().out.startswith(f"nnsam3d {nnsam3d.__version__} (torch ")
        with pytest.raises(SystemExit):
            module.main(["--help"])
        assert "--debug" in capsys.readouterr().out, module.__name__
