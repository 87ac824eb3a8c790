from pathlib import Path

from setuptools import find_packages, setup

COMMANDS = {
    "nnsam3d_plan_and_preprocess": "plan_and_preprocess",
    "nnsam3d_train": "train",
    "nnsam3d_predict": "predict",
    "nnsam3d_evaluate": "evaluate",
    "nnsam3d_find_best_configuration": "find_best_configuration",
    "nnsam3d_download_sam": "download_sam",
    "nnsam3d_demo": "demo",
    "nnsam3d_refine": "refine",
    "nnsam3d_evaluate_interactive": "evaluate_interactive",
}

setup(
    name="nnsam3d",
    version="0.1.0",
    description="Self-configuring training and inference of 3DMedSAM (SAM adapted to 3D) for volumetric medical image segmentation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnsam3d", "nnsam3d.*"]),
    install_requires=[
        # Install a torch build first (the README says how); this range accepts it as is.
        "torch>=2.1",
        "segment-anything>=1.0",
        "batchgenerators>=0.25",
        "nibabel>=5.0",
        "scikit-image>=0.21",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [f"{name}=nnsam3d.commands.{module}:main" for name, module in COMMANDS.items()],
    },
)
