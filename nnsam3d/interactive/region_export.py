"""Part of the session's class scores back to the input grid, equal to that part of the whole export.

After a click only the region of the re-predicted tiles (and the balls of the clicks reaching
into it) can change, so only it is exported again. Along an axis the export does not resample,
network voxels map one to one to image voxels, and the region is cut to the box; along a
resampled axis it is exported whole, since the resampling of a part is not bit-identical to the
part of the resampling (``tests/interactive/test_session.py`` compares with the whole export).
"""

from __future__ import annotations

import numpy as np
import torch

from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.geometry_restore import export_separate_axis
from nnsam3d.preprocessing.score_resampling import scores_to_labels

Box = tuple[slice, ...]


def export_boxes(box: Box, origin: tuple[int, ...], properties: CaseProperties) -> tuple[Box, Box]:
    """The network-grid region (unpadded) to re-export for scores changed in ``box`` (padded
    grid, whose first voxel of the network grid is ``origin``), and the canonical image region
    it becomes."""
    network_box, export_box = [], []
    for axis, (s, offset_in_padding) in enumerate(zip(box, origin)):
        network = properties.shape_after_resampling[axis]
        cropped = properties.shape_after_cropping[axis]
        offset = properties.crop_bbox[axis][0]
        if network == cropped:
            lo, hi = max(s.start - offset_in_padding, 0), min(s.stop - offset_in_padding, network)
            network_box.append(slice(lo, hi))
            export_box.append(slice(offset + lo, offset + hi))
        else:
            network_box.append(slice(0, network))
            export_box.append(slice(offset, offset + cropped))
    return tuple(network_box), tuple(export_box)


def export_region(scores: torch.Tensor, box: Box, origin: tuple[int, ...],
                  properties: CaseProperties) -> tuple[Box, np.ndarray]:
    """(canonical image box, its labels) for the scores (K, padded grid) changed in ``box``,
    exported as the predictor exports (argmax, ties to the lower class; resampled where the
    export resamples)."""
    network_box, export_box = export_boxes(box, origin, properties)
    region = scores[(slice(None), *(slice(o + s.start, o + s.stop) for o, s in zip(origin, network_box)))]
    shape = tuple(s.stop - s.start for s in export_box)
    # Resampled (where the export resamples) and argmaxed where the scores are, as the predictor does.
    return export_box, scores_to_labels(region, shape, export_separate_axis(properties)).cpu().numpy()
