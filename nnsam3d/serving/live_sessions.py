"""One live interactive session per datastore image, so that a click costs decoder passes only.

A session keeps its tiles' encoder features (``interactive.feature_cache``); opening one runs the
encoder over the whole image (the automatic segmentation), every later click re-runs the decoders
of the tiles around it. Sessions end after ``idle_seconds`` without a request, when the image is
uploaded again, and, least recently used first, when more than ``max_sessions`` are open (memory:
each holds its scores and a feature cache of at most ``cache_bytes``).

Not thread-safe on its own: the server calls it behind its model lock (``request_gate``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnsam3d.interactive.session import InteractiveSession, open_session
from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.io.image_io import read_volume_in_file_order
from nnsam3d.serving.errors import ServingError

DEFAULT_SESSION_CACHE_BYTES = 512 << 20


@dataclass
class LiveImage:
    """An image the server works on: its geometry, its automatic segmentation (file order
    (i, j, k)), the interactive session (None for a model without clicks) and the point lists
    the clients' clicks so far were made of (``click_sync``)."""

    image_id: str
    version: int
    geometry: ImageGeometry
    automatic: np.ndarray
    session: InteractiveSession | None
    applied: dict[int, tuple[list, list]] = field(default_factory=dict)
    background_owner: dict[tuple, int] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def labels(self) -> np.ndarray:
        """The current segmentation (i, j, k)."""
        return self.automatic if self.session is None else self.session.labels


class LiveSessions:
    """The open images of one predictor, by image id."""

    def __init__(self, predictor, interactive: bool, max_sessions: int = 4, idle_seconds: float = 900.0,
                 cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES, clock=time.monotonic):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.predictor = predictor
        self.interactive = interactive
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.cache_bytes = cache_bytes
        self._clock = clock
        self._open: OrderedDict[str, LiveImage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._open

    def expire(self) -> list[str]:
        """Close the sessions idle for longer than ``idle_seconds``; returns their image ids."""
        now = self._clock()
        expired = [image_id for image_id, live in self._open.items() if now - live.last_used > self.idle_seconds]
        for image_id in expired:
            del self._open[image_id]
        return expired

    def close(self, image_id: str) -> None:
        self._open.pop(image_id, None)

    def get(self, image_id: str, version: int, image_path: Path) -> LiveImage:
        """The live image of ``image_id`` (opened from ``image_path`` if not open, or if the
        datastore's ``version`` of it changed)."""
        self.expire()
        live = self._open.get(image_id)
        if live is not None and live.version != version:
            self.close(image_id)
            live = None
        if live is None:
            while len(self._open) >= self.max_sessions:
                self._open.popitem(last=False)
            live = self._open_image(image_id, version, image_path)
            self._open[image_id] = live
        self._open.move_to_end(image_id)
        live.last_used = self._clock()
        return live

    def _open_image(self, image_id: str, version: int, image_path: Path) -> LiveImage:
        image, geometry = read_volume_in_file_order(image_path)
        channels = self.predictor.description.num_channels
        if channels != 1:
            raise ServingError(f"this model takes {channels} channels per case; the datastore holds one file per "
                               "image, so only single-channel models are served")
        if self.interactive:
            session = open_session(self.predictor, image[None], geometry.affine_array, cache_bytes=self.cache_bytes)
            automatic = session.automatic()
        else:
            session = None
            automatic = self.predictor.predict_volume(image[None], geometry.affine_array)
        return LiveImage(image_id, version, geometry, np.asarray(automatic), session)
