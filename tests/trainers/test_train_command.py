"""nnsam3d_train's user errors: clear message, non-zero exit, nothing written."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.commands.train import build_parser, main
from nnsam3d.schemas.plans import Plans
from nnsam3d.trainers.splits import SPLITS_FILENAME


def _use_backbone(folders, dataset: str, backbone: str) -> None:
    path = folders.preprocessed / dataset / "nnsam3d_plans.json"
    plans = Plans.load(path)
    plans.network = plans.network.replace(backbone=backbone, adapter_blocks=(10, 11), window_size=(2, 14, 14))
    plans.save(path)


def _nothing_written(folders, dataset: str) -> bool:
    return not any(folders.results.iterdir()) and not (folders.preprocessed / dataset / SPLITS_FILENAME).exists()


def test_default_trainer_without_the_sam_checkpoint_of_a_vit_b_plan_stops_with_instructions(
    tiny_dataset, nnsam3d_folders, capsys, monkeypatch
):
    monkeypatch.delenv("nnSAM3D_sam_checkpoint", raising=False)
    _use_backbone(nnsam3d_folders, tiny_dataset, "vit_b")
    assert main([tiny_dataset, "0", "--device", "cpu"]) != 0
    message = capsys.readouterr().err
    assert "sam_vit_b_01ec64.pth" in message
    assert "nnsam3d_download_sam vit_b" in message and "nnSAM3DTrainer_fromScratch" in message
    assert _nothing_written(nnsam3d_folders, tiny_dataset)


def test_an_explicit_sam_checkpoint_that_does_not_exist_is_named(tiny_dataset, nnsam3d_folders, capsys, tmp_path):
    missing = tmp_path / "nowhere.pth"
    assert main([tiny_dataset, "0", "--device", "cpu", "--sam-checkpoint", str(missing)]) != 0
    assert str(missing) in capsys.readouterr().err
    assert _nothing_written(nnsam3d_folders, tiny_dataset)


def test_unknown_trainer_and_missing_plans_are_user_errors(tiny_dataset, nnsam3d_folders, capsys):
    assert main([tiny_dataset, "0", "-tr", "NoSuchTrainer"]) != 0
    assert "Known trainers: " in capsys.readouterr().err
    assert main([tiny_dataset, "0", "-p", "other_plans"]) != 0
    assert "other_plans.json: plans not found" in capsys.readouterr().err
    assert main([tiny_dataset, "0", "--val"]) != 0
    assert "checkpoint_final.pth: not found" in capsys.readouterr().err
    assert _nothing_written(nnsam3d_folders, tiny_dataset)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu_is_a_user_error(tiny_dataset, nnsam3d_folders, capsys):
    assert main([tiny_dataset, "0", "--device", "cuda"]) != 0
    assert "--device cuda was requested but PyTorch sees no CUDA GPU" in capsys.readouterr().err
    assert _nothing_written(nnsam3d_folders, tiny_dataset)


def test_fold_argument_accepts_numbers_and_all_only():
    parser = build_parser()
    assert parser.parse_args(["501", "all"]).fold == "all"
    assert parser.parse_args(["501", "3", "-tr", "X", "--npz", "--c"]).save_probabilities
    with pytest.raises(SystemExit):
        parser.parse_args(["501", "fold3"])


def test_compile_is_off_by_default_and_reaches_the_request():
    from nnsam3d.commands.train import request_from_arguments

    parser = build_parser()
    assert not request_from_arguments(parser.parse_args(["501", "0"])).compile
    assert request_from_arguments(parser.parse_args(["501", "0", "--compile"])).compile


def test_compile_mode_implies_compile_and_channels_last_reach_the_request():
    from nnsam3d.commands.train import request_from_arguments

    parser = build_parser()
    default = request_from_arguments(parser.parse_args(["501", "0", "--compile"]))
    assert default.compile_mode == "default" and not default.channels_last
    graphs = request_from_arguments(parser.parse_args(["--compile-mode", "reduce-overhead", "501", "0", "--channels-last"]))
    assert graphs.compile and graphs.compile_mode == "reduce-overhead" and graphs.channels_last
    with pytest.raises(SystemExit):
        parser.parse_args(["501", "0", "--compile-mode", "fast"])
