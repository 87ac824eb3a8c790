"""Interactive refinement: clicks correct a segmentation, the encoder runs once per tile.

>>> session = open_session(Predictor.from_model_folder(model_dir), ct, affine)
>>> labels = session.automatic()                                  # (i, j, k), as predict_volume
>>> labels = session.click((12.5, -40.0, 88.0), positive=True, label="liver")
>>> labels = session.undo()
>>> labels = session.reset("liver")

How a click is applied. The volume is tiled exactly as the predictor's sliding window does; the
session's class scores on the network grid start as the predictor's (or, when refining a given
segmentation, as its one-hot map), and every tile's vote in the Gaussian-weighted average starts
as those scores. A click re-predicts the tiles that contain it, through every network and
mirroring of the predictor, with the prompt (every click so far, and the current segmentation as
the prior, :mod:`click_prompts`), and swaps their votes in the average for the new ones within
the click's reach (its ball and the changed regions connected to it, :mod:`click_reach`). Every
tile's prompt carries the segmentation as it was before the click, and the tiles go through the
networks in batches of the predictor's batch size. Only those tiles' decoders run: the encoder's
features of a tile do not depend on prompts and are kept (:mod:`feature_cache`: bounded in
bytes, shared by folds that share an encoder), so a second click in the same region costs
decoder passes only. ``encoder_calls`` counts tiles encoded.

Where the network does not follow a click, the click is enforced (:mod:`click_enforcement`):
the clicked voxel carries what the click asks, and the region around it follows the network's
evidence within the click's ball. The enforced scores are what is exported and what the next
prompt's prior holds; the network's own scores are kept apart, so undo and reset stay exact.

A click is all or nothing: its votes are computed from the clicks so far plus the new one, and
the click, its votes, the labels and the undo record are kept only once all of it succeeded; if
anything fails (an out-of-memory error in a decoder, an export error) the session is as before.

What the user gets back stays on exactly the input grid: the label map changes only at voxels
whose exported label (scores resampled to the input grid and argmaxed, as the predictor exports)
changes with the click, and at clicked voxels; everything else keeps its value, postprocessing
of the automatic result and a given initial segmentation included.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from nnsam3d.devices import HostCopy, copy_to_host
from nnsam3d.inference.export import probabilities_to_label_map
from nnsam3d.inference.gaussian_weights import gaussian_importance_map
from nnsam3d.inference.sliding_window import pad_to_patch_size, window_slices
from nnsam3d.interactive.click_enforcement import (clicks_enforced, image_voxel_in, inside_ball, reach_of_clicks,
                                                    set_clicked_voxels)
from nnsam3d.interactive.click_reach import click_reach
from nnsam3d.interactive.click_geometry import ClickError, clickable_class, voxel_to_world, world_to_image_voxel, world_to_network_voxel
from nnsam3d.interactive.click_prompts import Click, build_prompts, click_sigma_voxels
from nnsam3d.interactive.initial_segmentation import canonical_initial_labels, one_hot_on_network_grid
from nnsam3d.interactive.feature_cache import FeatureCache, default_cache_bytes, encoder_of
from nnsam3d.interactive.region_export import export_region
from nnsam3d.io.geometry import from_canonical


@dataclass
class _Step:
    """What one action changed, to undo it: earlier clicks, earlier tile votes (host copies, read
    through ``get``, which waits for a copy still in flight), earlier labels."""

    clicks: list[Click]
    tile_votes: dict[int, HostCopy]
    changed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels_before: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    exported_before: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))


class InteractiveSession:
    """One volume, one predictor, a history of clicks. Opened by :func:`open_session`.

    Every method returning a label map returns (i, j, k) int16 on the input image's grid.
    cache_bytes: bound of the encoder-feature cache (bytes); None: a quarter of the GPU's free
    memory, or 2 GiB on a CPU (:func:`feature_cache.default_cache_bytes`).
    """

    def __init__(self, predictor, image: np.ndarray, affine: np.ndarray, initial_labels: np.ndarray | None = None,
                 cache_bytes: int | None = None):
        networks = predictor.networks
        not_interactive = [str(path) for network, path in zip(networks, predictor.checkpoint_files or [None] * len(networks))
                           if not getattr(network, "is_interactive", False)]
        if not_interactive:
            raise ClickError(
                "this model takes no clicks: it was trained without a prompt branch "
                f"({', '.join(p for p in not_interactive if p) or 'network'}); train one with "
                "-tr nnSAM3DTrainer_interactive"
            )
        self.predictor = predictor
        self.num_classes = predictor.num_classes
        self.feature_cache = FeatureCache(default_cache_bytes(predictor.device) if cache_bytes is None else cache_bytes)
        self.encoder_calls = 0

        case = predictor.preprocess_volume(image, affine)
        self.properties = case.properties
        self.geometry = case.properties.geometry
        self.spacing = tuple(predictor.plans.target_spacing)
        self._click_sigma = click_sigma_voxels(self.spacing)
        data = torch.from_numpy(np.ascontiguousarray(case.data, dtype=np.float32))
        self._padded, self._region = pad_to_patch_size(data, predictor.plans.patch_size)
        self._origin = tuple(s.start for s in self._region)
        padded_shape = tuple(self._padded.shape[1:])
        self._windows = window_slices(padded_shape, predictor.plans.patch_size, predictor.step_size)
        # Scores, weights and the prior live on the predictor's GPU where they fit (two float32
        # score volumes, the weight sum, two int16 priors) beside the feature cache at its bound:
        # a click updates and argmaxes them there, and only the changed region of the scores
        # comes back for the export.
        device = predictor.volume_device(padded_shape, 2 * 4 * self.num_classes + 4 + 2 * 2,
                                         reserved_bytes=self.feature_cache.max_bytes)
        self._weights = torch.from_numpy(np.array(gaussian_importance_map(tuple(predictor.plans.patch_size)))).to(device)
        self._weight_sum = torch.zeros(padded_shape, dtype=torch.float32, device=device)
        for window in self._windows:
            self._weight_sum[window] += self._weights

        if initial_labels is None:
            base = torch.from_numpy(predictor.predict_probabilities(case.data).astype(np.float32))
            canonical_labels = probabilities_to_label_map(base.numpy(), self.properties, predictor.postprocessing)
        else:
            canonical_labels = canonical_initial_labels(initial_labels, self.geometry, self.num_classes)
            base = one_hot_on_network_grid(canonical_labels, self.properties, self.num_classes)
        self._scores = torch.zeros((self.num_classes, *padded_shape), dtype=torch.float32, device=device)
        self._scores[0] = 1.0  # the padding is background
        self._scores[(slice(None), *self._region)] = base.to(device)
        self._base_scores = self._scores.clone()
        self._base_prior = self._scores.argmax(0).to(torch.int16)
        self._start_exported = self._export_whole([])
        self._automatic_labels = canonical_labels.astype(np.int16, copy=False)
        self._history: list[_Step] = []
        self._restore_start()

    # ------------------------------------------------------------------ public
    def automatic(self) -> np.ndarray:
        """The segmentation the session started from (the predictor's automatic one unless an
        initial segmentation was given); clicks are kept."""
        return from_canonical(self._automatic_labels, self.geometry)

    @property
    def labels(self) -> np.ndarray:
        """The current segmentation (i, j, k)."""
        return from_canonical(self._labels, self.geometry)

    @property
    def canonical_labels(self) -> np.ndarray:
        """The current segmentation in canonical order (z, y, x), for ``io.image_io.write_segmentation``."""
        return self._labels

    def check_click(self, point_mm, label: str | int) -> None:
        """Raise :class:`ClickError` if a click at ``point_mm`` (mm) for ``label`` would be refused."""
        self.label_value(label)
        world_to_network_voxel(point_mm, self.properties)

    def click(self, point_mm=None, positive: bool = True, label: str | int = 1, *, voxel=None) -> np.ndarray:
        """Add a click and return the updated label map.

        point_mm: world point (x, y, z) in mm (RAS+, the image affine's frame); or ``voxel``:
        an index (i, j, k) of the input image. label: a class name of the dataset or its value.
        Raises :class:`ClickError` for a point outside the image or an unknown label.
        """
        value = self.label_value(label)
        padded_position, image_voxel = self._click_point(point_mm, voxel)
        clicks = [*self.clicks, Click(value, padded_position, bool(positive), image_voxel)]
        tiles = self._tiles_containing(padded_position)
        step = _Step(clicks=self.clicks, tile_votes=dict(self._tile_votes))
        with self._all_or_nothing(tiles, clicks):
            votes = self._predict_tiles(tiles, clicks)
            step.changed, step.labels_before, step.exported_before = self._update_labels(tiles, clicks)
        # Nothing below can fail: the click exists from here on.
        self._tile_votes.update(votes)
        self.clicks = clicks
        self._history.append(step)
        return self.labels

    def tiles_for(self, point_mm=None, *, voxel=None) -> list[int]:
        """Indices of the sliding-window tiles a click at this point re-predicts (point as for
        :meth:`click`). A click in tiles seen before runs decoders only."""
        return self._tiles_containing(self._click_point(point_mm, voxel)[0])

    def _click_point(self, point_mm, voxel) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
        """A click's point (mm, or an input voxel) on the padded network grid, and the canonical
        input voxel it falls in; refused if outside."""
        if (point_mm is None) == (voxel is None):
            raise ClickError("give a click either as point_mm or as voxel, not both or neither")
        if voxel is not None:
            index = np.asarray(voxel, dtype=np.float64)
            if index.shape != (3,):
                raise ClickError(f"a voxel index needs three values (i, j, k), got {voxel!r}")
            if np.any(index < -0.5) or np.any(index > np.array(self.geometry.shape) - 0.5):
                raise ClickError(f"voxel {tuple(voxel)} lies outside the image of shape {self.geometry.shape}")
            point_mm = voxel_to_world(index, self.geometry)
        position = world_to_network_voxel(point_mm, self.properties)
        return tuple(p + o for p, o in zip(position, self._origin)), world_to_image_voxel(point_mm, self.properties)

    def undo(self) -> np.ndarray:
        """Take back the last click (or reset); returns the label map before it."""
        if not self._history:
            raise ClickError("nothing to undo")
        step = self._history[-1]
        if not step.tile_votes:  # back at the start: exactly, not up to rounding
            self._scores, self._prior = self._base_scores.clone(), self._base_prior.clone()
        # Else the tiles whose vote the step changed (the others hold the very same copy).
        elif tiles := sorted(index for index in set(self._tile_votes) | set(step.tile_votes)
                             if self._tile_votes.get(index) is not step.tile_votes.get(index)):
            both = [*self.clicks, *step.clicks]  # the enforcement of those undone goes, of those restored returns
            with self._all_or_nothing(tiles, both):
                for index in tiles:
                    previous = step.tile_votes.get(index)
                    self._swap_vote(index, self._base_vote(index) if previous is None else previous.get())
                self._refresh_prior(self._affected_box(tiles, both), step.clicks)
        self._history.pop()
        self._tile_votes = step.tile_votes
        self.clicks = step.clicks
        flat_labels, flat_exported = self._labels.reshape(-1), self._exported.reshape(-1)
        flat_labels[step.changed] = step.labels_before
        flat_exported[step.changed] = step.exported_before
        return self.labels

    def reset(self, label: str | int) -> np.ndarray:
        """Drop every click of ``label`` and replay the others from the starting segmentation."""
        value = self.label_value(label)
        step = _Step(clicks=self.clicks, tile_votes=dict(self._tile_votes))
        # The replay works on new scores, votes and label arrays (_restore_start copies), so the
        # current ones, kept here, are the state to return to if it fails.
        before = (self._scores, self._prior, self._labels, self._exported, self._tile_votes, self.clicks)
        labels_before, exported_before = self._labels, self._exported
        kept = [click for click in self.clicks if click.label != value]
        try:
            self._restore_start()
            for click in kept:
                clicks = [*self.clicks, click]
                tiles = self._tiles_containing(click.position)
                self._tile_votes.update(self._predict_tiles(tiles, clicks))
                self.clicks = clicks
                self._update_labels(tiles, clicks)
        except BaseException:
            self._scores, self._prior, self._labels, self._exported, self._tile_votes, self.clicks = before
            raise
        changed = np.flatnonzero((labels_before != self._labels).reshape(-1) | (exported_before != self._exported).reshape(-1))
        step.changed = changed
        step.labels_before = labels_before.reshape(-1)[changed]
        step.exported_before = exported_before.reshape(-1)[changed]
        self._history.append(step)
        return self.labels

    def label_value(self, label: str | int) -> int:
        """The class value of ``label`` (a name or value); only the dataset's foreground classes take clicks."""
        return clickable_class(self.predictor.description, label)

    # ------------------------------------------------------------------ tiles
    def _tiles_containing(self, position) -> list[int]:
        voxel = [int(round(p)) for p in position]
        return [index for index, window in enumerate(self._windows)
                if all(s.start <= v < s.stop for s, v in zip(window, voxel))]

    def _base_vote(self, index: int) -> torch.Tensor:
        """A tile's vote before any click: the starting scores (their weighted mean is themselves)."""
        return self._base_scores[(slice(None), *self._windows[index])]

    def _current_vote(self, index: int) -> torch.Tensor:
        """Tile ``index``'s vote in the average now, on the scores' device."""
        current = self._tile_votes.get(index)
        return self._base_vote(index) if current is None else current.get().to(self._scores.device, non_blocking=True)

    def _swap_vote(self, index: int, vote: torch.Tensor, current: torch.Tensor | None = None) -> None:
        """Swap tile ``index``'s vote in the average from its kept one (``current``, if the caller
        has it on the device already) to ``vote``. The scores only: the prior follows once for all
        tiles of an action (:meth:`_refresh_prior`, :meth:`_refresh_region`)."""
        window = self._windows[index]
        region = (slice(None), *window)
        current = self._current_vote(index) if current is None else current
        self._scores[region] += (vote.to(self._scores.device) - current) * (self._weights / self._weight_sum[window])

    def _refresh_prior(self, box: tuple[slice, ...], clicks: list[Click]) -> None:
        """The prior (argmax of the scores, ``clicks`` enforced) again over ``box``, which holds
        everywhere an action can have changed it."""
        with self._clicks_enforced(clicks):
            self._prior[box] = self._scores[(slice(None), *box)].argmax(0).to(torch.int16)

    def _predict_tiles(self, indices: list[int], clicks: list[Click]) -> dict[int, HostCopy]:
        """Predict the tiles with ``clicks`` and swap their votes, within the last click's reach
        (:mod:`click_reach`), into the scores (the prior follows in :meth:`_update_labels`); returns
        the new votes' host copies, for the caller to keep (for undo) once the whole action succeeded. Every tile's prompt holds the
        segmentation as it was before this action, so no tile's result depends on the order the
        tiles run in."""
        fresh = {}
        size = max(1, self.predictor.batch_size)
        for start in range(0, len(indices), size):
            chunk = indices[start:start + size]
            for index, vote in zip(chunk, self._prompted_votes(chunk, clicks)):
                fresh[index] = copy_to_host(vote)  # off the device until the click's reach is known
        box = self._box_of(indices)
        reach = self._reach(box, fresh, clicks[-1])
        votes = {}
        for index in indices:
            local = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(self._windows[index], box))
            current = self._current_vote(index)
            vote = torch.where(reach[local], fresh[index].get().to(self._scores.device), current)
            self._swap_vote(index, vote, current)
            votes[index] = copy_to_host(vote)  # kept for undo, off the device
        return votes

    def _reach(self, box: tuple[slice, ...], fresh: dict[int, HostCopy], click: Click) -> torch.Tensor:
        """Where in ``box`` the tiles' ``fresh`` votes are taken (boolean, the box's shape)."""
        scores = self._scores[(slice(None), *box)]
        candidate = scores.clone()
        for index, vote in fresh.items():
            window = self._windows[index]
            local = (slice(None), *(slice(w.start - b.start, w.stop - b.start) for w, b in zip(window, box)))
            candidate[local] += (vote.get().to(scores.device) - self._current_vote(index)) * (
                self._weights / self._weight_sum[window])
        changed = (candidate.argmax(0) != scores.argmax(0)).cpu().numpy()
        reach = click_reach(changed, inside_ball(box, click.position, self._click_sigma))
        return torch.from_numpy(reach).to(scores.device)

    @contextmanager
    def _all_or_nothing(self, tiles: list[int], clicks: list[Click]):
        """Put the scores and prior of ``tiles``' region back as they were if the block fails; the
        block changes nothing else before its last step (the label arrays, updated last)."""
        box = self._affected_box(tiles, clicks)
        region = (slice(None), *box)
        scores, prior = self._scores[region].clone(), self._prior[box].clone()
        try:
            yield
        except BaseException:
            self._scores[region] = scores
            self._prior[box] = prior
            raise

    def _box_of(self, tiles: list[int]) -> tuple[slice, ...]:
        """The bounding box (padded network grid) of the windows of ``tiles``."""
        windows = [self._windows[index] for index in tiles]
        return tuple(slice(min(w[a].start for w in windows), max(w[a].stop for w in windows)) for a in range(3))

    def _affected_box(self, tiles: list[int], clicks: list[Click]) -> tuple[slice, ...]:
        """Where re-predicting ``tiles`` can change the enforced labels (:func:`reach_of_clicks`)."""
        return reach_of_clicks(self._box_of(tiles), clicks, self._click_sigma, self._scores.shape[1:])

    def _clicks_enforced(self, clicks: list[Click]):
        return clicks_enforced(self._scores, clicks, self._click_sigma)

    def _encoded(self, network, tiles: list[int], axes: tuple[int, ...], inputs: torch.Tensor) -> list:
        """Encoder features of the batch ``tiles`` in mirroring ``axes`` (``inputs``: their windows,
        already mirrored), from the cache where this network's encoder computed them before; the
        others are encoded together and kept one entry per tile."""
        encoder = encoder_of(network)
        per_tile = [self.feature_cache.get(FeatureCache.key(encoder, index, axes)) for index in tiles]
        missing = [row for row, features in enumerate(per_tile) if features is None]
        if missing:
            fresh = network.encode(inputs[missing] if len(missing) < len(tiles) else inputs)
            self.encoder_calls += len(missing)
            for position, row in enumerate(missing):
                # A copy per tile: a view would keep the whole batch alive behind the cache's count.
                per_tile[row] = fresh if len(missing) == 1 else [level[position:position + 1].clone() for level in fresh]
                self.feature_cache.put(FeatureCache.key(encoder, tiles[row], axes), per_tile[row])
        if len(tiles) == 1:
            return per_tile[0]
        return [torch.cat(levels) for levels in zip(*per_tile)]

    def _prompted_votes(self, tiles: list[int], clicks: list[Click]) -> list[torch.Tensor]:
        """Mean softmax (K, *patch) of each of ``tiles`` with the prompt of ``clicks``, over networks
        and mirrorings, the tiles as one batch: on a CPU a decoder pass over two tiles costs about
        what one alone costs (a batch of one takes PyTorch's slow convolution path for the small
        levels; ``benchmarks/interactive_latency.py``). One (network, mirroring) at a time, so
        that only one pass's features are held beyond the cache."""
        windows = [self._windows[index] for index in tiles]
        device = self.predictor.device
        ensemble = self.predictor.window_ensemble
        inputs = torch.stack([self._padded[(slice(None), *window)] for window in windows]).to(device)
        prompts = torch.stack([build_prompts(self._prior[window].to(device), clicks, self.num_classes, self.spacing,
                                             tuple(s.start for s in window)) for window in windows])
        autocast = (torch.autocast(device.type, dtype=ensemble.autocast_dtype)
                    if ensemble.autocast_dtype else nullcontext())
        total = None
        with torch.inference_mode(), autocast:
            for network in ensemble.networks:
                for axes in ensemble.mirrorings:
                    flip = (lambda t: torch.flip(t, axes)) if axes else (lambda t: t)
                    mirrored = flip(inputs)
                    features = self._encoded(network, tiles, axes, mirrored)
                    logits = network.decode(mirrored, features, flip(prompts))
                    probabilities = flip(torch.softmax(logits.float(), dim=1))
                    total = probabilities if total is None else total + probabilities
        return list((total / ensemble.passes_per_window).unbind(0))

    # ------------------------------------------------------------------ labels
    def _export_whole(self, clicks: list[Click] | None = None) -> np.ndarray:
        """Canonical label map of all current scores, exported as the predictor does (no
        postprocessing), ``clicks`` (default: the session's) enforced."""
        clicks = self.clicks if clicks is None else clicks
        with self._clicks_enforced(clicks):
            scores = self._scores[(slice(None), *self._region)].cpu().numpy()
            labels = probabilities_to_label_map(scores, self.properties, None)
            set_clicked_voxels(labels, tuple(slice(0, n) for n in labels.shape), clicks, self._scores)
        return labels

    def _refresh_region(self, box: tuple[slice, ...], clicks: list[Click]) -> tuple[tuple[slice, ...], np.ndarray]:
        """After the scores changed in ``box`` (padded network grid): the prior there again, and
        the canonical region whose export can change, with its labels exported anew; both with
        ``clicks`` enforced (computed once for both). Outside them the previous ones still hold."""
        with self._clicks_enforced(clicks):
            self._prior[box] = self._scores[(slice(None), *box)].argmax(0).to(torch.int16)
            export_box, labels = export_region(self._scores, box, self._origin, self.properties)
            set_clicked_voxels(labels, export_box, clicks, self._scores)
        return export_box, labels

    def _restore_start(self) -> None:
        """Scores, labels and clicks exactly as at the start (no history change)."""
        self._scores, self._prior = self._base_scores.clone(), self._base_prior.clone()
        self._exported = self._start_exported.copy()
        self._labels = self._automatic_labels.copy()
        self._tile_votes: dict[int, HostCopy] = {}
        self.clicks: list[Click] = []

    def _update_labels(self, tiles: list[int], clicks: list[Click]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prior and export of the scores changed by re-predicting ``tiles``, ``clicks`` enforced
        (:meth:`_refresh_region`); labels change where the export changed, and at clicked voxels whose label differs from the
        export's (one set otherwise by the automatic result's postprocessing or a given
        segmentation). Returns (changed flat indices, their labels before, their export before)."""
        export_box, labels = self._refresh_region(self._affected_box(tiles, clicks), clicks)
        previous = self._exported[export_box]  # a view: updated in place below
        differs = labels != previous
        current = self._labels[export_box]
        for click in clicks:
            local = image_voxel_in(click, export_box)
            if local is not None and current[local] != labels[local]:
                differs[local] = True
        local = np.nonzero(differs)
        changed = np.ravel_multi_index(tuple(i + s.start for i, s in zip(local, export_box)), self._exported.shape)
        flat_labels = self._labels.reshape(-1)
        labels_before = flat_labels[changed].copy()
        exported_before = previous[local]
        flat_labels[changed] = labels[local]
        previous[local] = labels[local]
        return changed, labels_before, exported_before


def open_session(predictor, image: np.ndarray, affine: np.ndarray, initial_labels: np.ndarray | None = None,
                 **options) -> InteractiveSession:
    """An interactive refinement session of ``predictor`` (an ``inference.predictor.Predictor``
    whose networks have a prompt branch) on a volume held in memory.

    image, affine: as ``Predictor.predict_volume`` ((i, j, k) or (C, i, j, k) intensities in the
    file's voxel order; a 4x4 voxel → world matrix in mm, or three voxel sizes).
    initial_labels: a label map (i, j, k) on the image's grid to refine; None starts from the
    predictor's automatic segmentation. ``options``: see :class:`InteractiveSession`.
    The session lives here, above ``inference/``: the predictor knows nothing of clicks.
    """
    return InteractiveSession(predictor, image, affine, initial_labels, **options)
