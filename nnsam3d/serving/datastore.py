"""The server's datastore: a folder of images, saved labels and a small JSON index.

::

    DATASTORE/
      datastore.json          the index, in MONAI Label's local-datastore shape (below)
      images/ID.nii.gz        uploaded images (any ending nnsam3d reads: .nii.gz, .nii, .nrrd, .mha, ...)
      labels/TAG/ID.nii.gz    saved labels; TAG "final" holds the corrected labels, which
                              ``datastore_to_dataset`` turns into training data

The index is what ``GET /datastore/?output=all`` answers, as MONAI Label answers it
(``{"name", "description", "images_dir", "labels_dir", "objects": {ID: {"image": {"ext", "info"},
"labels": {TAG: {"ext", "info"}}}}}``). Every file is written atomically (``io.atomic``): the
image or label first, then the index, so a server killed during a save loses nothing already
saved and leaves no half-written file; an index entry always names a complete file. Ids pass
:func:`safe_names.checked_id` and every path is checked to stay inside the folder.
"""

from __future__ import annotations

import copy
import os
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnsam3d.io.atomic import TEMPORARY_PREFIX, atomic_path, read_json, write_json_atomic
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import SUPPORTED_FILE_ENDINGS, file_ending_of, read_volume_in_file_order
from nnsam3d.serving.errors import NotFoundError, ServingError, TooLargeError, UnsupportedFileError
from nnsam3d.serving.safe_names import checked_id, inside

INDEX_NAME = "datastore.json"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
FINAL_TAG = "final"
ORIGINAL_TAG = "original"
COPY_CHUNK = 1 << 20


def checked_ending(filename: str | None, what: str) -> str:
    """The image ending of an uploaded file's name (``.nii.gz`` when the client gave no name)."""
    if not filename:
        return ".nii.gz"
    ending = file_ending_of(os.path.basename(filename))
    if ending not in SUPPORTED_FILE_ENDINGS:
        raise UnsupportedFileError(f"{what} {os.path.basename(filename)!r}: unsupported file type {ending!r}; "
                                   f"send one of {', '.join(SUPPORTED_FILE_ENDINGS)}")
    return ending


class Datastore:
    """The datastore folder ``root`` (created). Thread-safe: one lock guards the index. One
    server per folder: opening it removes the temporary files a killed server left (a write's
    ``.tmp-*`` file whose move into place never ran; the index never names one)."""

    def __init__(self, root: str | os.PathLike, name: str = "nnsam3d", description: str = "",
                 max_upload_bytes: int = 1 << 30):
        self.root = Path(root)
        self.max_upload_bytes = max_upload_bytes
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / LABELS_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.removed_leftovers = self._remove_leftover_temporaries()
        index_path = self.root / INDEX_NAME
        if index_path.exists():
            self._index = read_json(index_path)
        else:
            self._index = {"name": name, "description": description, "images_dir": IMAGES_DIR,
                           "labels_dir": LABELS_DIR, "objects": {}}
            write_json_atomic(index_path, self._index)

    def _remove_leftover_temporaries(self) -> list[Path]:
        folders = [self.root, self.root / IMAGES_DIR, *(p for p in (self.root / LABELS_DIR).iterdir() if p.is_dir())]
        removed = []
        for folder in folders:
            for path in folder.glob(f"{TEMPORARY_PREFIX}*"):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
        return removed

    # ------------------------------------------------------------------ reading
    def to_json(self) -> dict:
        """The index (``?output=all``)."""
        with self._lock:
            return _deep_copy(self._index)

    def status(self) -> dict:
        """``{"total", "completed", "label_tags"}`` as MONAI Label's ``?output=stats``."""
        with self._lock:
            objects = self._index["objects"]
            tags: dict[str, int] = {}
            for entry in objects.values():
                for tag in entry["labels"]:
                    tags[tag] = tags.get(tag, 0) + 1
            completed = sum(1 for entry in objects.values() if FINAL_TAG in entry["labels"])
            return {"total": len(objects), "completed": completed, "label_tags": tags}

    def datalist(self) -> list[dict]:
        """Pairs of image and final label paths (``?output=train``)."""
        with self._lock:
            return [{"image": str(self.image_path(image_id)), "label": str(self.label_path(image_id, FINAL_TAG))}
                    for image_id, entry in self._index["objects"].items() if FINAL_TAG in entry["labels"]]

    def record_model_classes(self, labels: dict[str, int], channel_names: dict[str, str]) -> None:
        """Remember the served model's classes and channels in the index (key ``nnsam3d``, beside
        MONAI Label's keys), so that ``datastore_to_dataset`` writes the dataset.json they belong to."""
        with self._lock:
            record = {"labels": dict(labels), "channel_names": dict(channel_names)}
            if self._index.get("nnsam3d") != record:
                self._index["nnsam3d"] = record
                write_json_atomic(self.root / INDEX_NAME, self._index)

    def model_classes(self) -> dict | None:
        with self._lock:
            return _deep_copy(self._index.get("nnsam3d"))

    def image_ids(self) -> list[str]:
        with self._lock:
            return list(self._index["objects"])

    def _entry(self, image_id: str) -> dict:
        checked_id(image_id)
        entry = self._index["objects"].get(image_id)
        if entry is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; upload it first (PUT /datastore/image)")
        return entry

    def image_path(self, image_id: str) -> Path:
        with self._lock:
            entry = self._entry(image_id)
            path = self.root / IMAGES_DIR / f"{image_id}{entry['image']['ext']}"
        if not path.is_file():
            raise NotFoundError(f"image {image_id!r}: its file {path.name} is missing from the datastore")
        return inside(self.root, path)

    def image_info(self, image_id: str) -> dict:
        with self._lock:
            info = dict(self._entry(image_id)["image"]["info"])
        info["path"] = str(self.image_path(image_id))
        return info

    def label_path(self, image_id: str, tag: str = FINAL_TAG) -> Path:
        checked_id(tag, "label tag")
        with self._lock:
            entry = self._entry(image_id)
            label = entry["labels"].get(tag)
            if label is None:
                raise NotFoundError(f"image {image_id!r} has no label tagged {tag!r}")
            path = self.root / LABELS_DIR / tag / f"{image_id}{label['ext']}"
        if not path.is_file():
            raise NotFoundError(f"label {image_id!r} ({tag}): its file {path.name} is missing from the datastore")
        return inside(self.root, path)

    def label_info(self, image_id: str, tag: str = FINAL_TAG) -> dict:
        checked_id(tag, "label tag")
        with self._lock:
            label = self._entry(image_id)["labels"].get(tag)
            if label is None:
                raise NotFoundError(f"image {image_id!r} has no label tagged {tag!r}")
            return _deep_copy(label["info"])

    def image_version(self, image_id: str) -> int:
        """Changes when the image is uploaded again (live sessions of the old one are dropped)."""
        with self._lock:
            return int(self._entry(image_id)["image"]["info"].get("version", 0))

    # ------------------------------------------------------------------ writing
    def add_image(self, image_id: str | None, filename: str | None, source: BinaryIO, info: dict | None = None) -> str:
        """Store an uploaded image (read from ``source``) under ``image_id`` (default: the file's
        name without its ending); returns the id. The file must read as an image."""
        ending = checked_ending(filename, "image")
        if not image_id:
            image_id = os.path.basename(filename or "")[: -len(ending) or None]
        checked_id(image_id)
        final = inside(self.root, self.root / IMAGES_DIR / f"{image_id}{ending}")
        with atomic_path(final) as temporary:
            self._copy_limited(source, temporary, "image")
            try:
                _, geometry = read_volume_in_file_order(temporary)
            except Exception as error:  # noqa: BLE001 - any reader failure means "not an image we read"
                raise UnsupportedFileError(f"image {image_id!r}: the uploaded file does not read as a "
                                           f"{ending} image ({_reason(error)})") from None
            with self._lock:
                previous = self._index["objects"].get(image_id)
                version = int(previous["image"]["info"].get("version", 0)) + 1 if previous else 1
                image_info = {**{k: v for k, v in (info or {}).items() if k not in ("path", "client_id")},
                              "ts": int(time.time()), "name": final.name, "shape": list(geometry.shape),
                              "version": version}
        with self._lock:
            if previous and previous["image"]["ext"] != ending:
                (self.root / IMAGES_DIR / f"{image_id}{previous['image']['ext']}").unlink(missing_ok=True)
            labels = previous["labels"] if previous else {}
            self._index["objects"][image_id] = {"image": {"ext": ending, "info": image_info}, "labels": labels}
            write_json_atomic(self.root / INDEX_NAME, self._index)
        return image_id

    def save_label(self, image_id: str, filename: str | None, source: BinaryIO, tag: str = FINAL_TAG,
                   info: dict | None = None) -> str:
        """Store a label map for ``image_id`` under ``tag``; returns the label id (the image id).

        The file must be an integer label map on the image's grid (same shape and affine)."""
        tag = checked_id(tag or FINAL_TAG, "label tag")
        image = self.image_path(image_id)
        ending = checked_ending(filename, "label")
        folder = inside(self.root, self.root / LABELS_DIR / tag)
        folder.mkdir(exist_ok=True)
        final = inside(self.root, folder / f"{image_id}{ending}")
        with atomic_path(final) as temporary:
            self._copy_limited(source, temporary, "label")
            check_label_on_image(temporary, image, f"label for {image_id!r}")
            with self._lock:
                entry = self._entry(image_id)
                previous = entry["labels"].get(tag)
        with self._lock:
            if previous and previous["ext"] != ending:
                (folder / f"{image_id}{previous['ext']}").unlink(missing_ok=True)
            label_info = {**{k: v for k, v in (info or {}).items() if k != "client_id"}, "ts": int(time.time()),
                          "name": final.name}
            self._entry(image_id)["labels"][tag] = {"ext": ending, "info": label_info}
            write_json_atomic(self.root / INDEX_NAME, self._index)
        return image_id

    def _copy_limited(self, source: BinaryIO, target: Path, what: str) -> None:
        written = 0
        with open(target, "wb") as handle:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > self.max_upload_bytes:
                    raise TooLargeError(f"the {what} is larger than the upload limit of {self.max_upload_bytes} bytes "
                                        "(nnsam3d_serve --max-upload-mb)")
                handle.write(chunk)
        if written == 0:
            raise UnsupportedFileError(f"the uploaded {what} file is empty")


def check_label_on_image(label_file: Path, image_file: Path, what: str) -> tuple[np.ndarray, ImageGeometry]:
    """The label map of ``label_file`` (file order) and its geometry, if it is an integer label map
    on ``image_file``'s grid; else a 4xx error naming the difference."""
    try:
        labels, geometry = read_volume_in_file_order(label_file)
    except Exception as error:  # noqa: BLE001
        raise UnsupportedFileError(f"{what}: the file does not read as a label map ({_reason(error)})") from None
    _, image_geometry = read_volume_in_file_order(image_file)
    if tuple(geometry.shape) != tuple(image_geometry.shape) or not np.allclose(
            geometry.affine_array, image_geometry.affine_array, atol=1e-3):
        raise ServingError(f"{what}: its grid (shape {tuple(geometry.shape)}) differs from the image's "
                           f"(shape {tuple(image_geometry.shape)}) or its affine does; save the label on the image's grid")
    if not np.array_equal(np.rint(labels), labels) or (labels.size and labels.min() < 0):
        raise ServingError(f"{what}: a label map holds non-negative integers only")
    return labels, geometry


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _deep_copy(content):
    return copy.deepcopy(content)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
