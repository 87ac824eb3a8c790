"""Pictures for a quick visual check: predicted contours over the image in three planes.

One PNG per case, three panels (axial, coronal, sagittal) through the centre of the largest
predicted structure (the largest connected component of the foreground class with the most
voxels; the image centre when nothing was predicted). Pixels are drawn with their physical
aspect ratio and in radiological convention (the patient's right on the left of the picture).

Drawing uses matplotlib's object interface with the Agg canvas, never ``pyplot``: it needs no
display and is safe in the background writer thread.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from nnsam3d.inference.postprocessing import largest_component
from nnsam3d.io.atomic import atomic_path

_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3")


def largest_structure_centre(label_map: np.ndarray, label: int | None = None) -> tuple[int, int, int]:
    """Voxel (z, y, x) at the centre of mass of the largest connected component of ``label``
    (None: of the foreground class with the most voxels); the image centre when it is absent."""
    if label is None:
        if not (label_map > 0).any():
            return tuple(n // 2 for n in label_map.shape)
        label = int(np.argmax(np.bincount(label_map[label_map > 0].ravel().astype(np.int64))))
    mask = label_map == label
    if not mask.any():
        return tuple(n // 2 for n in label_map.shape)
    return tuple(int(round(c)) for c in ndimage.center_of_mass(largest_component(mask)))


def _planes(volume: np.ndarray, centre: Sequence[int], spacing: Sequence[float]):
    """(name, 2D array ready to draw with origin='lower', aspect) for the three planes."""
    z, y, x = centre
    sz, sy, sx = spacing
    # Rows are drawn bottom-up (origin='lower'): anterior and superior end up at the top.
    # Columns are reversed where x (left→right) is horizontal: radiological convention.
    return (
        ("axial", volume[z][:, ::-1], sy / sx),
        ("coronal", volume[:, y, :][:, ::-1], sz / sx),
        ("sagittal", volume[:, :, x][:, ::-1], sz / sy),  # anterior on the left
    )


def overlay_figure(
    image: np.ndarray,
    label_map: np.ndarray,
    spacing: Sequence[float],
    label_names: dict[int, str] | None = None,
    title: str = "",
    centre: Sequence[int] | None = None,
    size_inches: tuple[float, float] = (12, 4.6),
    dpi: int = 100,
) -> Figure:
    """The contours of ``label_map`` over ``image`` in three planes through ``centre`` (voxel
    (z, y, x); default: the largest predicted structure), as a matplotlib figure on an Agg canvas.

    image: (z, y, x) canonical intensities (one channel). label_map: (z, y, x) on the same grid.
    spacing: mm along (z, y, x). label_names: label value → name for the legend.
    """
    if image.shape != label_map.shape:
        raise ValueError(f"image {image.shape} and label map {label_map.shape} differ in shape")
    centre = tuple(centre) if centre is not None else largest_structure_centre(label_map)
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    labels = [int(v) for v in np.unique(label_map) if v > 0]
    figure = Figure(figsize=size_inches, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    image_planes = _planes(image, centre, spacing)
    label_planes = _planes(label_map, centre, spacing)
    for axis, (name, picture, aspect), (_, labels_2d, _) in zip(axes, image_planes, label_planes):
        axis.imshow(picture, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect, interpolation="nearest")
        for label in labels:
            mask = labels_2d == label
            if mask.any() and not mask.all():
                axis.contour(mask.astype(np.float32), levels=[0.5], colors=[label_colour(label)],
                             linewidths=1.2, origin="lower")
        axis.set_title(name)
        axis.set_axis_off()
    if labels:
        handles = [Line2D([0], [0], color=label_colour(v), lw=2) for v in labels]
        names = [label_names.get(v, str(v)) if label_names else str(v) for v in labels]
        figure.legend(handles, names, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    figure.suptitle(f"{title}  (planes through voxel z={centre[0]}, y={centre[1]}, x={centre[2]})".strip())
    return figure


def label_colour(label: int) -> str:
    """The contour colour of a label value (the same in every picture)."""
    return _COLOURS[(label - 1) % len(_COLOURS)]


def save_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    spacing: Sequence[float],
    output_file: str | os.PathLike,
    label_names: dict[int, str] | None = None,
    title: str = "",
) -> None:
    """Write a PNG of :func:`overlay_figure` (planes through the largest structure)."""
    figure = overlay_figure(image, label_map, spacing, label_names, title)
    with atomic_path(output_file) as temporary:
        figure.savefig(temporary, format="png")
