"""nnsam3d: a self-configuring pipeline that trains and runs 3DMedSAM (SAM adapted to 3D)."""

__version__ = "0.1.0"
