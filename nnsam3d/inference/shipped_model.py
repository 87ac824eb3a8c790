"""The files a predictor loads, carried to machines that cannot read the driver's folders.

A Ray worker on another node cannot read a model the driver extracted into its own temporary
folder (``nnsam3d_predict -m model.zip``), nor a results folder that is not shared. So the driver
reads the files a :class:`~nnsam3d.inference.predictor.Predictor` loads (the chosen folds'
checkpoints of each model folder and ``postprocessing.json``) into one :class:`ShippedModel`,
puts it once into Ray's object store, and each worker writes it into a folder of its own node
(:func:`unpack_model`), loads its networks from there and deletes it.

Size: the checkpoints themselves, once in the object store (slim vit_b checkpoints are about
22 MB a fold; full fine-tuned ones the size of the SAM file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnsam3d.inference.model_folders import fold_checkpoints
from nnsam3d.inference.postprocessing import POSTPROCESSING_FILENAME


@dataclass
class ShippedModel:
    """Model folders as bytes.

    folders: per model folder, its ``DatasetXXX_Name/TRAINER__PLANS`` name (for messages) and
        its files, ``fold_K/CHECKPOINT`` → content.
    postprocessing: the content of the run's ``postprocessing.json``, or None.
    """

    folders: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    postprocessing: bytes | None = None

    @property
    def num_bytes(self) -> int:
        return sum(len(content) for _, files in self.folders for content in files.values())


def pack_model(
    model_dirs: Sequence[str | os.PathLike],
    folds: Sequence[int | str] | None,
    checkpoint_name: str,
    postprocessing_folder: str | os.PathLike | None,
) -> ShippedModel:
    """Read what ``Predictor.from_model_folders(model_dirs, folds, checkpoint_name,
    postprocessing_folder=...)`` would load. Raises ``ModelFolderError`` for missing folds."""
    shipped = ShippedModel()
    for folder in map(Path, model_dirs):
        files = {path.relative_to(folder).as_posix(): path.read_bytes()
                 for path in fold_checkpoints(folder, folds, checkpoint_name)}
        shipped.folders.append((f"{folder.parent.name}/{folder.name}", files))
    if postprocessing_folder is not None and (Path(postprocessing_folder) / POSTPROCESSING_FILENAME).is_file():
        shipped.postprocessing = (Path(postprocessing_folder) / POSTPROCESSING_FILENAME).read_bytes()
    return shipped


def unpack_model(shipped: ShippedModel, root: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """Write ``shipped`` under ``root`` (an empty folder of this machine); returns (the model
    folders, the folder of ``postprocessing.json`` or None), for ``Predictor.from_model_folders``."""
    root = Path(root)
    model_dirs = []
    for index, (name, files) in enumerate(shipped.folders):
        folder = root / str(index) / name  # an index first: two folders may share a name
        for relative, content in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(content)
        model_dirs.append(folder)
    postprocessing_folder = None
    if shipped.postprocessing is not None:
        postprocessing_folder = root / "postprocessing"
        postprocessing_folder.mkdir()
        (postprocessing_folder / POSTPROCESSING_FILENAME).write_bytes(shipped.postprocessing)
    return model_dirs, postprocessing_folder
