"""SAM-format checkpoints made by segment-anything's own builder (random weights, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnsam3d.model.backbones import get_backbone
from nnsam3d.model.sam_reference import build_reference_sam


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (SAM's builder leaves position tables at zero and norms at
    one, which would let a parity test pass with those parts wired wrongly)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            position_table = "pos" in name  # pos_embed, rel_pos_h, rel_pos_w: make them matter
            scale = 0.5 if position_table else 0.05
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
            if parameter.ndim == 1:
                parameter.add_(1.0)


class SamCheckpointFactory:
    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[tuple[str, int], tuple[Path, torch.nn.Module]] = {}

    def __call__(self, backbone: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
        """(path of a SAM-format file, the SAM model it holds), for ``backbone``'s shapes."""
        key = (backbone, seed)
        if key not in self._cache:
            sam = build_reference_sam(get_backbone(backbone))
            randomize_(sam, seed)
            path = self.folder / f"sam_{backbone}_seed{seed}.pth"
            torch.save(sam.state_dict(), path)
            self._cache[key] = (path, sam.eval())
        return self._cache[key]


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory) -> SamCheckpointFactory:
    return SamCheckpointFactory(tmp_path_factory.mktemp("sam_checkpoints"))
