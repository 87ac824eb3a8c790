"""Folder variables (nnU-Net's convention, nnUNet_raw fallback, announced defaults) and dataset names."""

from __future__ import annotations

import pytest

from nnsam3d import paths


def test_nnunet_raw_is_used_when_nnsam3d_raw_is_unset(nnsam3d_folders, monkeypatch, tmp_path):
    monkeypatch.delenv(paths.RAW_VARIABLE)
    monkeypatch.setenv(paths.RAW_FALLBACK_VARIABLE, str(tmp_path / "nnunet_raw"))
    assert paths.raw_root() == tmp_path / "nnunet_raw"
    monkeypatch.setenv(paths.RAW_VARIABLE, str(tmp_path / "ours"))
    assert paths.raw_root() == tmp_path / "ours"


def test_unset_folders_fall_back_to_the_home_default_and_say_so_once(monkeypatch, tmp_path, capsys):
    for variable in (paths.RAW_VARIABLE, paths.RAW_FALLBACK_VARIABLE, paths.PREPROCESSED_VARIABLE,
                     paths.RESULTS_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(paths, "DEFAULT_ROOT", tmp_path / "nnsam3d_data")
    monkeypatch.setattr(paths, "_notices_given", set())

    assert paths.results_root() == tmp_path / "nnsam3d_data" / "results"
    assert paths.results_root() == tmp_path / "nnsam3d_data" / "results"
    notices = capsys.readouterr().err
    assert notices.count("nnSAM3D_results is not set") == 1
    assert str(tmp_path / "nnsam3d_data" / "results") in notices
    assert paths.raw_root() == tmp_path / "nnsam3d_data" / "raw"
    assert "nnSAM3D_raw is not set" in capsys.readouterr().err


def test_datasets_are_found_by_number_or_name_in_any_stage_folder(nnsam3d_folders):
    (nnsam3d_folders.raw / "Dataset501_Liver").mkdir()
    (nnsam3d_folders.preprocessed / "Dataset502_Brain").mkdir()
    (nnsam3d_folders.results / "Dataset503_Lung").mkdir()
    assert paths.resolve_dataset_name(501) == "Dataset501_Liver"
    assert paths.resolve_dataset_name(" 502 ") == "Dataset502_Brain"  # only preprocessed data here
    assert paths.resolve_dataset_name("503") == "Dataset503_Lung"  # only a trained model here
    assert paths.resolve_dataset_name("Dataset777_Anything") == "Dataset777_Anything"
    assert paths.fold_dir(501, "T", "P", 3) == nnsam3d_folders.results / "Dataset501_Liver" / "T__P" / "fold_3"


def test_unknown_ambiguous_and_malformed_datasets_are_explained(nnsam3d_folders):
    with pytest.raises(paths.DatasetNotFoundError, match=r"No folder Dataset042_\* found in .*raw"):
        paths.resolve_dataset_name(42)
    (nnsam3d_folders.raw / "Dataset600_A").mkdir()
    (nnsam3d_folders.raw / "Dataset600_B").mkdir()
    with pytest.raises(paths.DatasetNotFoundError, match="ambiguous.*Dataset600_A, Dataset600_B"):
        paths.resolve_dataset_name(600)
    with pytest.raises(paths.DatasetNotFoundError, match="neither a dataset number"):
        paths.resolve_dataset_name("liver")
