"""Trainers found by built-in name, module path and entry point; unknown names list the known ones."""

from __future__ import annotations

import sys
import textwrap

import pytest

from nnsam3d.trainers import registry
from nnsam3d.trainers.base_trainer import nnSAM3DTrainer
from nnsam3d.trainers.registry import UnknownTrainerError, get_trainer_class
from nnsam3d.trainers.variants import nnSAM3DTrainer_5epochs, nnSAM3DTrainer_fromScratch


def test_builtin_trainers_by_name():
    assert get_trainer_class("nnSAM3DTrainer") is nnSAM3DTrainer
    assert get_trainer_class("nnSAM3DTrainer_fromScratch") is nnSAM3DTrainer_fromScratch
    assert get_trainer_class("nnSAM3DTrainer_5epochs").num_epochs == 5
    names = registry.known_trainer_names()
    for name in ("nnSAM3DTrainer_fullFinetune", "nnSAM3DTrainer_noAdapters", "nnSAM3DTrainer_1epoch",
                 "nnSAM3DTrainer_50epochs", "nnSAM3DTrainer_100epochs"):
        assert name in names


def test_a_trainer_in_user_code_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_trainers.py").write_text(textwrap.dedent("""
        from nnsam3d.trainers.base_trainer import nnSAM3DTrainer

        class LowLR(nnSAM3DTrainer):
            lr_with_sam = 1e-5

        class NotATrainer:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_trainers", raising=False)
    assert get_trainer_class("my_trainers:LowLR").lr_with_sam == 1e-5
    with pytest.raises(UnknownTrainerError, match="not a subclass"):
        get_trainer_class("my_trainers:NotATrainer")
    with pytest.raises(UnknownTrainerError, match="no class 'Missing'"):
        get_trainer_class("my_trainers:Missing")
    with pytest.raises(UnknownTrainerError, match="cannot import"):
        get_trainer_class("no_such_module_xyz:LowLR")


def test_a_trainer_registered_as_entry_point_of_an_installed_distribution(tmp_path, monkeypatch):
    # An installed distribution as pip leaves it: a .dist-info folder with entry_points.txt.
    dist_info = tmp_path / "my_nnsam3d_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nnsam3d-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nFiveEpochs = nnsam3d.trainers.variants:nnSAM3DTrainer_5epochs\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_trainer_class("FiveEpochs") is nnSAM3DTrainer_5epochs
    assert "FiveEpochs" in registry.known_trainer_names()


def test_unknown_trainer_lists_the_known_ones():
    with pytest.raises(UnknownTrainerError) as error:
        get_trainer_class("nnSAM3DTrainer_typo")
    assert "nnSAM3DTrainer_fromScratch" in str(error.value)
    assert "package.module:ClassName" in str(error.value)
