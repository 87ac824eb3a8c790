"""Seconds to bring one CT's class scores back to its own grid as a label map (issue 24, point 3:
"resampling of the next case overlapped", and the 10 s CT goal on data that is not at the
plan's spacing, which is most data).

A CT of 512 x 512 x 300 voxels at 1.25 x 0.7 x 0.7 mm (z, y, x), predicted at a plan's target
spacing: its scores for 15 classes (14 organs and background) are float16 on the network grid,
and the export resamples each class back and takes the argmax. Two plans:

* ``anisotropic``: the typical abdominal CT plan's 2.5 x 0.78 x 0.78 mm (the coarse axis is
  resampled nearest-neighbour, in-plane bilinear), network grid 150 x 460 x 460;
* ``isotropic``: 1.5 x 0.78 x 0.78 mm (trilinear), network grid 250 x 460 x 460.

Timed on the CPU, in the same run: the export as it was (scipy's ``ndimage.zoom`` class by class,
``resampling.reference_scores_to_label_map``) against PyTorch's interpolation
(``geometry_restore.restore_scores_to_label_map``, what a CPU run and ``--save-probabilities``
use, and on a GPU the same code where the scores are), the share of voxels given the same label,
and the probabilities file's resampling (``restore_probabilities``). Scores are random (the cost
does not depend on them). Results: ``benchmarks/results/export_speed_cpu.json``.

    python benchmarks/export_speed.py [--classes 15] [--no-reference]
    python benchmarks/export_speed.py --dry-run     # a small case, seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from nnsam3d.io.geometry import ImageGeometry
from nnsam3d.preprocessing.case_properties import CaseProperties
from nnsam3d.preprocessing.geometry_restore import restore_probabilities, restore_scores_to_label_map
from nnsam3d.preprocessing.resampling import compute_new_shape, reference_scores_to_label_map, separate_axis_for

from benchmark_support import environment, load_average, write_result

CT_SHAPE, CT_SPACING = (300, 512, 512), (1.25, 0.7, 0.7)
PLANS = {"anisotropic": (2.5, 0.78, 0.78), "isotropic": (1.5, 0.78, 0.78)}
DRY_RUN_SHAPE = (20, 48, 40)


def case_properties(shape, spacing, target_spacing) -> CaseProperties:
    """A case whose crop box is the whole image (a CT's air is not zero), on an axis-aligned grid."""
    geometry = ImageGeometry(shape=tuple(reversed(shape)),
                             affine=tuple(map(tuple, np.diag([*reversed(spacing), 1.0]))))
    return CaseProperties(case_id="ct", geometry=geometry, original_spacing=tuple(spacing),
                          shape_before_cropping=tuple(shape), crop_bbox=tuple((0, n) for n in shape),
                          shape_after_cropping=tuple(shape), spacing_after_resampling=tuple(target_spacing),
                          shape_after_resampling=compute_new_shape(shape, spacing, target_spacing))


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 2)


def measure(properties: CaseProperties, classes: int, reference: bool) -> dict:
    rng = np.random.default_rng(0)
    scores = rng.random((classes, *properties.shape_after_resampling), dtype=np.float32).astype(np.float16)
    separate_axis = separate_axis_for(properties.spacing_after_resampling, properties.original_spacing)
    labels, seconds = timed(restore_scores_to_label_map, scores, properties)
    result = {"network_grid": list(properties.shape_after_resampling), "case_grid": list(properties.shape_after_cropping),
              "separate_axis": separate_axis, "label_map_seconds": seconds}
    if reference:
        expected, reference_seconds = timed(reference_scores_to_label_map, scores, properties.shape_after_cropping,
                                            separate_axis)
        result.update(reference_label_map_seconds=reference_seconds,
                      speedup=round(reference_seconds / max(seconds, 1e-3), 1),
                      same_label_share=float(np.mean(labels == expected)))
    del labels
    _, result["probabilities_seconds"] = timed(restore_probabilities, scores, properties)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=15, help="classes including background (default 15)")
    parser.add_argument("--no-reference", action="store_true", help="skip scipy's export (a minute per plan)")
    parser.add_argument("--dry-run", action="store_true", help=f"a {DRY_RUN_SHAPE} case, seconds")
    parser.add_argument("--output", type=Path, default=None, help="result file (default benchmarks/results/...)")
    arguments = parser.parse_args(argv)
    shape = DRY_RUN_SHAPE if arguments.dry_run else CT_SHAPE
    results = {"environment": environment(), "load_average_before": load_average(), "case_shape": list(shape),
               "case_spacing": list(CT_SPACING), "classes": arguments.classes, "plans": {}}
    for name, target_spacing in PLANS.items():
        properties = case_properties(shape, CT_SPACING, target_spacing)
        results["plans"][name] = {"target_spacing": list(target_spacing),
                                  **measure(properties, arguments.classes, not arguments.no_reference)}
        print(name, results["plans"][name], flush=True)
    results["load_average_after"] = load_average()
    write_result(arguments.output or ("export_speed_dry_run.json" if arguments.dry_run else "export_speed_cpu.json"),
                 results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
