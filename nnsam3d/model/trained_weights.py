"""What a trained network's checkpoint must hold, and rebuilding the network from it.

A network built from a SAM file (``build_network(config, sam_checkpoint=...)``) remembers the
file's identity (:class:`SamSource`: file name and SHA-256). When part of its encoder stays
frozen (``trainable`` ``adapters`` or ``frozen_encoder``), those frozen tensors are exactly the
SAM file's, adapted to 3D by a deterministic rule: a checkpoint needs only the other tensors
plus the identity (:func:`trained_state_dict`), and :func:`rebuild_trained_network` rebuilds the
frozen part from the SAM file found the usual ways (explicit path, ``nnSAM3D_sam_checkpoint``,
the SAM checkpoint folder), checked by its SHA-256. For vit_b with adapters this stores 5.4 M
of 93.7 M parameters (about 22 MB instead of 375 MB).

Networks that change every weight (``trainable="full"``: fine-tuning, from scratch, vit_tiny)
have nothing to rebuild: their state is stored whole and no SAM file is needed to load it.

The folds of an ensemble rebuilt from one SAM file hold the same frozen tensors; after loading,
nothing changes them, so :func:`share_frozen_tensors` lets them use one copy (vit_h: one 2.5 GB
encoder instead of five).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.config import NetworkConfig
from nnsam3d.model.network import MedSAM3D, build_network, parameter_is_trainable
from nnsam3d.model.sam_checkpoints import SamCheckpointNotFoundError, SamSource, file_sha256, find_sam_checkpoint


class SamSourceError(SamCheckpointNotFoundError):
    """The SAM file a slim checkpoint was trained on cannot be found, or a file differs from it."""


def frozen_parameter_names(network: MedSAM3D) -> set[str]:
    """Parameters that training leaves at their SAM values: empty when the network was not built
    from a SAM file or when everything trains."""
    if getattr(network, "sam_source", None) is None:
        return set()
    return {name for name, _ in network.named_parameters() if not parameter_is_trainable(name, network.config)}


def trained_state_dict(network: MedSAM3D) -> tuple[dict[str, Tensor], SamSource | None]:
    """(the tensors a checkpoint must store, the SAM file the rest is rebuilt from or None).

    With nothing frozen the whole ``state_dict`` and None."""
    frozen = frozen_parameter_names(network)
    state = network.state_dict()
    if not frozen:
        return state, None
    return {name: tensor for name, tensor in state.items() if name not in frozen}, network.sam_source


def locate_sam_source(
    source: SamSource,
    backbone: str,
    explicit_path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike] = (),
) -> Path:
    """The file with ``source``'s SHA-256 among: ``explicit_path``, ``nnSAM3D_sam_checkpoint``,
    ``source.file_name`` and the backbone's official file name in each of ``search_dirs``.

    Raises :class:`SamSourceError` naming the file and hash wanted and every candidate tried.
    """
    search_dirs = [Path(folder).expanduser() for folder in search_dirs]
    candidates: list[Path] = []
    found = find_sam_checkpoint(backbone, explicit_path, search_dirs)  # explicit, variable, official name
    if found is not None:
        candidates.append(found)
    names = [source.file_name]
    official = get_backbone(backbone).checkpoint_filename
    if official:
        names.append(official)
    candidates += [folder / name for folder in search_dirs for name in names if (folder / name).is_file()]
    tried = []
    for candidate in dict.fromkeys(candidates):  # in order, each once
        digest = file_sha256(candidate)
        if digest == source.sha256:
            return candidate
        tried.append(f"{candidate} has SHA-256 {digest}")
    where = ", ".join(str(folder) for folder in search_dirs) or "no folders"
    raise SamSourceError(
        f"this model was trained on the SAM checkpoint {source.file_name} with SHA-256 {source.sha256}; "
        f"its frozen encoder is rebuilt from that file, which was not found"
        + (f" ({'; '.join(tried)})" if tried else f" (searched {where})")
        + f". Put that exact file into the SAM checkpoint folder ({where}), or name it with "
        f"--sam-checkpoint PATH (or nnSAM3D_sam_checkpoint)."
    )


def rebuild_trained_network(
    config: NetworkConfig,
    weights: dict[str, Tensor],
    sam_source: SamSource | None,
    *,
    source: str,
    sam_checkpoint: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike] = (),
) -> MedSAM3D:
    """The network a checkpoint describes: built from its SAM file (found by
    :func:`locate_sam_source`) when it has one, then loaded with the stored ``weights``.

    source: the checkpoint's path, named in errors. Raises ``ValueError`` when the stored tensors
    are not exactly those the network trains (a checkpoint of another network).
    """
    if sam_source is None:
        network = build_network(config)
        network.load_state_dict(weights)
        return network
    sam_file = locate_sam_source(sam_source, config.backbone, sam_checkpoint, search_dirs)
    network = build_network(config, sam_file)
    expected = set(network.state_dict()) - frozen_parameter_names(network)
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"{source}: the stored tensors do not match the network's trainable ones "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); the checkpoint is damaged or of another network."
        )
    network.load_state_dict(weights, strict=False)
    return network


def share_frozen_tensors(network: MedSAM3D, reference: MedSAM3D) -> int:
    """Make ``network`` use ``reference``'s frozen parameters themselves (not copies) where both
    were rebuilt from the same SAM file and the tensors are equal (same name, shape, dtype, device
    and values); returns the bytes of ``network``'s own copies, free once nothing else holds them.

    Only for networks that stay frozen from here on (prediction): a shared tensor changed in one
    network would change in every other. Trained tensors (adapters, decoder, 3D embeddings) are
    never shared, as they differ from fold to fold.
    """
    if network.sam_source is None or reference.sam_source is None or (
        network.sam_source.sha256 != reference.sam_source.sha256  # the bytes decide, not the file name
    ):
        return 0
    reference_parameters = dict(reference.named_parameters())
    freed = 0
    for name in sorted(frozen_parameter_names(network) & frozen_parameter_names(reference)):
        own, shared = network.get_parameter(name), reference_parameters[name]
        if own is shared or (own.shape, own.dtype, own.device) != (shared.shape, shared.dtype, shared.device):
            continue
        if not torch.equal(own, shared):
            continue
        module_name, _, leaf = name.rpartition(".")
        setattr(network.get_submodule(module_name), leaf, shared)
        freed += own.nbytes
    return freed
