"""``install_model --force`` never loses the installed model: a failure injected at each step
leaves the previous model complete in place and no staging folder; the model card's SHA-256 is
checked, so a changed checkpoint is refused by name."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from nnsam3d.model_sharing.export import export_model
from nnsam3d.model_sharing.install import STAGING_PREFIX, install_model
from nnsam3d.model_sharing.model_card import ModelSharingError
from nnsam3d.model_sharing.model_zip import opened_model


@pytest.fixture(scope="module")
def model_zip(random_model, tmp_path_factory) -> Path:
    archive = tmp_path_factory.mktemp("zip") / "model.zip"
    export_model(random_model.model_dir, archive)
    return archive


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def zip_snapshot(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as opened:
        return {"/".join(name.split("/")[2:]): opened.read(name) for name in opened.namelist()}


@pytest.fixture
def installed(model_zip, tmp_path):
    """A results folder with the model installed and then changed (so that the previous model
    and the zip's differ): (results folder, installed folder, the previous model's files)."""
    results = tmp_path / "results"
    destination = install_model(model_zip, results)
    (destination / "fold_1" / "training_log.txt").write_text("the previous model's log\n")
    (destination / "fold_0" / "checkpoint_final.pth").write_bytes(b"the previous model's weights")
    return results, destination, snapshot(destination)


def leftovers(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.startswith(STAGING_PREFIX)]


def fail_call(monkeypatch, module, name: str, number: int) -> list:
    """Make the ``number``-th call of ``module.name`` raise OSError (the others run); returns the calls."""
    original, calls = getattr(module, name), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise OSError(f"injected failure of {name} call {number}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)
    return calls


def fail_after_extracting(monkeypatch):
    original = zipfile.ZipFile.extractall

    def extract_then_fail(self, *args, **kwargs):
        original(self, *args, **kwargs)  # a partial model on disk, as a full disk would leave it
        raise OSError("injected failure while extracting")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_then_fail)


@pytest.mark.parametrize("step", ["extract", "set the installed model aside", "move the new model in"])
def test_a_failure_before_the_new_model_is_in_place_keeps_the_previous_one(step, installed, model_zip, monkeypatch):
    results, destination, previous = installed
    if step == "extract":
        fail_after_extracting(monkeypatch)
    else:
        calls = fail_call(monkeypatch, os, "replace", 1 if step.startswith("set") else 2)
    with pytest.raises((OSError, ModelSharingError), match="injected failure"):
        install_model(model_zip, results, force=True)
    monkeypatch.undo()
    assert snapshot(destination) == previous
    assert leftovers(results) == [] and sorted(p.name for p in results.iterdir()) == [destination.parent.name]
    if step == "move the new model in":
        assert len(calls) == 3, "the previous model was renamed back"


def test_a_failed_first_install_leaves_nothing(model_zip, tmp_path, monkeypatch):
    fail_call(monkeypatch, os, "replace", 1)
    with pytest.raises(OSError, match="injected failure"):
        install_model(model_zip, tmp_path / "results")
    assert list((tmp_path / "results").iterdir()) == []


def test_once_the_new_model_is_in_place_a_failed_deletion_of_the_previous_one_is_a_warning(
    installed, model_zip, monkeypatch
):
    results, destination, previous = installed
    fail_call(monkeypatch, shutil, "rmtree", 1)
    with pytest.warns(UserWarning, match="could not be deleted from") as warned:
        assert install_model(model_zip, results, force=True) == destination
    monkeypatch.undo()
    assert snapshot(destination) == zip_snapshot(model_zip)
    (staging,) = leftovers(results)
    assert str(staging) in str(warned[0].message)
    assert snapshot(staging / "previous") == previous  # nothing lost: the user deletes it


def test_when_the_previous_model_cannot_be_moved_back_the_error_says_where_it_is(installed, model_zip, monkeypatch):
    results, destination, previous = installed
    original, calls = os.replace, []

    def replace(source, target):
        calls.append(source)
        if len(calls) >= 2:  # the new model cannot move in, nor the previous one back
            raise OSError("injected failure of rename")
        return original(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ModelSharingError, match="could not be moved back; that model is complete in") as raised:
        install_model(model_zip, results, force=True)
    monkeypatch.undo()
    (staging,) = leftovers(results)
    assert str(staging / "previous") in str(raised.value) and str(destination) in str(raised.value)
    assert snapshot(staging / "previous") == previous


def test_a_checkpoint_changed_after_export_is_refused_by_name(installed, model_zip, tmp_path):
    results, destination, previous = installed
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(model_zip) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename.endswith("fold_1/checkpoint_final.pth"):
                middle = len(content) // 2  # one byte flipped in the weights; the zip itself is valid
                content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]
            target.writestr(item, content)
    with pytest.raises(ModelSharingError, match=r"fold_1/checkpoint_final.pth has SHA-256 [0-9a-f]{64}, but the "
                                                r"model card says [0-9a-f]{64}"):
        install_model(tampered, results, force=True)
    assert snapshot(destination) == previous and leftovers(results) == []
    with pytest.raises(ModelSharingError, match="fold_1/checkpoint_final.pth has SHA-256"):
        with opened_model(tampered):  # nnsam3d_predict -m checks it too
            pass
    assert install_model(model_zip, results, force=True) == destination  # the genuine zip installs
    assert snapshot(destination) == zip_snapshot(model_zip)
