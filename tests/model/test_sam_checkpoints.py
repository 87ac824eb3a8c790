"""Finding, downloading (no internet: file:// URLs) and reading SAM checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
import torch

from nnsam3d.commands import download_sam
from nnsam3d.model import backbones
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import build_network
from nnsam3d.model.sam_checkpoints import (
    SAM_CHECKPOINT_VARIABLE,
    SamCheckpointDownloadError,
    SamCheckpointError,
    SamCheckpointNotFoundError,
    download_sam_checkpoint,
    find_sam_checkpoint,
    load_sam_encoder_state,
    resolve_sam_checkpoint,
)

VIT_B_FILE = "sam_vit_b_01ec64.pth"


@pytest.fixture(autouse=True)
def no_checkpoint_variable(monkeypatch):
    monkeypatch.delenv(SAM_CHECKPOINT_VARIABLE, raising=False)


def test_official_hashes_are_filled_in():
    for name in ("vit_b", "vit_l", "vit_h"):
        digest = backbones.BACKBONES[name].checkpoint_sha256
        assert digest is not None and re.fullmatch("[0-9a-f]{64}", digest), digest


def test_search_order_explicit_then_variable_then_folders(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    (second / VIT_B_FILE).write_bytes(b"x")
    assert find_sam_checkpoint("vit_b", search_dirs=[first, second]) == second / VIT_B_FILE

    elsewhere = tmp_path / "my_sam.pth"
    elsewhere.write_bytes(b"x")
    monkeypatch.setenv(SAM_CHECKPOINT_VARIABLE, str(elsewhere))
    assert find_sam_checkpoint("vit_b", search_dirs=[second]) == elsewhere

    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(b"x")
    assert find_sam_checkpoint("vit_b", explicit_path=explicit, search_dirs=[second]) == explicit
    # The variable names an official checkpoint: it does not apply to vit_tiny.
    assert find_sam_checkpoint("vit_tiny", search_dirs=[second]) is None


def test_a_wrong_explicit_path_or_variable_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(SamCheckpointNotFoundError, match="missing.pth"):
        find_sam_checkpoint("vit_b", explicit_path=tmp_path / "missing.pth")
    monkeypatch.setenv(SAM_CHECKPOINT_VARIABLE, str(tmp_path / "typo.pth"))
    with pytest.raises(SamCheckpointNotFoundError, match=f"{SAM_CHECKPOINT_VARIABLE} is set to .*typo.pth"):
        find_sam_checkpoint("vit_b")


def test_not_found_message_says_what_to_do(tmp_path):
    with pytest.raises(SamCheckpointNotFoundError) as raised:
        resolve_sam_checkpoint("vit_b", search_dirs=[tmp_path])
    message = str(raised.value)
    for needed in (VIT_B_FILE, str(tmp_path), "--sam-checkpoint PATH", "nnsam3d_download_sam vit_b",
                   "nnSAM3DTrainer_fromScratch", "--backbone vit_tiny", backbones.SAM_CHECKPOINT_BASE_URL):
        assert needed in message
    with pytest.raises(SamCheckpointNotFoundError, match="no official SAM checkpoint"):
        resolve_sam_checkpoint("vit_tiny", search_dirs=[tmp_path])


def test_full_sam_file_loads_through_the_user_path(sam_checkpoint):
    path, sam = sam_checkpoint("vit_tiny")
    state = load_sam_encoder_state(path, backbone="vit_tiny")
    assert state.keys() == sam.image_encoder.state_dict().keys()  # prefix stripped, decoders dropped
    torch.testing.assert_close(state["blocks.1.attn.rel_pos_h"], sam.image_encoder.blocks[1].attn.rel_pos_h)
    network = build_network(NetworkConfig(backbone="vit_tiny", patch_size=(4, 32, 32)), sam_checkpoint=path)
    torch.testing.assert_close(network.encoder.pos_embed, sam.image_encoder.pos_embed)
    torch.testing.assert_close(network.encoder.blocks[3].mlp.lin2.weight, sam.image_encoder.blocks[3].mlp.lin2.weight)


def test_encoder_only_and_wrapped_files_load(tmp_path, sam_checkpoint):
    _, sam = sam_checkpoint("vit_tiny")
    encoder_only = tmp_path / "encoder.pth"
    torch.save(sam.image_encoder.state_dict(), encoder_only)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": sam.state_dict(), "epoch": 3}, wrapped)
    for path in (encoder_only, wrapped):
        assert load_sam_encoder_state(path, backbone="vit_tiny").keys() == sam.image_encoder.state_dict().keys()


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(SamCheckpointNotFoundError, match="nothing.pth does not exist"):
        load_sam_encoder_state(tmp_path / "nothing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SamCheckpointError, match="truncated.pth could not be read"):
        load_sam_encoder_state(truncated)
    no_encoder = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, no_encoder)
    with pytest.raises(SamCheckpointError, match="other.pth holds no SAM image encoder"):
        load_sam_encoder_state(no_encoder)


def test_wrong_shapes_are_named_with_the_likely_backbone(sam_checkpoint):
    path, _ = sam_checkpoint("vit_tiny")
    with pytest.raises(SamCheckpointError) as raised:
        build_network(NetworkConfig(backbone="vit_b"), sam_checkpoint=path)
    message = str(raised.value)
    assert str(path) in message and "does not fit backbone vit_b" in message
    assert "looks like vit_tiny" in message and "(1, 64, 64, 96) in the file, (1, 64, 64, 768) for vit_b" in message
    print(message)


@pytest.fixture
def official_file(tmp_path, monkeypatch):
    """A small stand-in for sam_vit_b_01ec64.pth, served from a file:// URL, with the registry's
    SHA-256 set to its digest (the real digest is of the real 375 MB file)."""
    served = tmp_path / "server" / VIT_B_FILE
    served.parent.mkdir()
    served.write_bytes(b"SAM weights " * 100_000)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    spec = dataclasses.replace(backbones.BACKBONES["vit_b"], checkpoint_sha256=digest)
    monkeypatch.setitem(backbones.BACKBONES, "vit_b", spec)
    monkeypatch.setattr(backbones, "SAM_CHECKPOINT_BASE_URL", served.parent.as_uri() + "/")
    return served


def test_download_verifies_and_lands_atomically(tmp_path, official_file):
    cache = tmp_path / "cache"
    path = download_sam_checkpoint("vit_b", cache, progress=False)
    assert path == cache / VIT_B_FILE and path.read_bytes() == official_file.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [VIT_B_FILE]  # no partial file left
    assert resolve_sam_checkpoint("vit_b", search_dirs=[cache]) == path


def test_download_with_a_wrong_hash_leaves_nothing(tmp_path, official_file, monkeypatch):
    spec = dataclasses.replace(backbones.BACKBONES["vit_b"], checkpoint_sha256="0" * 64)
    monkeypatch.setitem(backbones.BACKBONES, "vit_b", spec)
    cache = tmp_path / "cache"
    with pytest.raises(SamCheckpointDownloadError, match="SHA-256 is [0-9a-f]{64}, not 0{64}"):
        download_sam_checkpoint("vit_b", cache, progress=False)
    assert list(cache.iterdir()) == []


def test_download_offline_is_a_clear_error(tmp_path):
    with pytest.raises(SamCheckpointDownloadError, match="Could not download .*nnSAM3DTrainer_fromScratch"):
        download_sam_checkpoint("vit_b", tmp_path, progress=False, url=(tmp_path / "absent.pth").as_uri())
    assert list(tmp_path.iterdir()) == []


def test_resolve_downloads_when_asked_and_finds_the_cache_later(tmp_path, official_file):
    cache = tmp_path / "cache"
    assert resolve_sam_checkpoint("vit_b", download=True, cache_dir=cache) == cache / VIT_B_FILE
    official_file.unlink()  # no second download: the cache is searched
    assert resolve_sam_checkpoint("vit_b", cache_dir=cache) == cache / VIT_B_FILE


def test_download_command(tmp_path, official_file, monkeypatch, capsys):
    monkeypatch.setenv("nnSAM3D_sam_checkpoints", str(tmp_path / "from_env"))
    assert download_sam.main(["vit_b", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "from_env" / VIT_B_FILE)
    assert download_sam.main(["vit_b", "--cache-dir", str(tmp_path / "explicit"), "--quiet"]) == 0
    assert (tmp_path / "explicit" / VIT_B_FILE).is_file()
    offline = ["vit_b", "--cache-dir", str(tmp_path / "x"), "--url", "file:///nowhere.pth", "--quiet"]
    assert download_sam.main(offline) == 1
    assert "Could not download" in capsys.readouterr().err
