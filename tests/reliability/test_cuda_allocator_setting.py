"""Every command asks PyTorch's CUDA allocator for expandable segments (less fragmentation,
measured on a GPU by benchmarks/gpu_checks.py), and leaves a user's own setting alone."""

from __future__ import annotations

import os

import pytest

from nnsam3d.commands.command_line import ALLOCATOR_VARIABLES
from nnsam3d.commands.predict import main as predict_main


def _unset(monkeypatch, names):
    for name in names:
        monkeypatch.setenv(name, "recorded")  # so that monkeypatch restores the variable afterwards
        monkeypatch.delenv(name)


def _run_version():
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--version"])
    assert exit_info.value.code == 0


def test_a_command_sets_expandable_segments_when_the_user_did_not(monkeypatch, capsys):
    _unset(monkeypatch, ALLOCATOR_VARIABLES)
    _run_version()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


@pytest.mark.parametrize("name", ALLOCATOR_VARIABLES)
def test_a_users_allocator_setting_wins(monkeypatch, capsys, name):
    _unset(monkeypatch, ALLOCATOR_VARIABLES)
    monkeypatch.setenv(name, "max_split_size_mb:128")
    _run_version()
    assert os.environ[name] == "max_split_size_mb:128"
    assert all(other not in os.environ for other in ALLOCATOR_VARIABLES if other != name)
