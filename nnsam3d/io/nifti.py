"""Former home of image reading and writing, kept so that ``from nnsam3d.io.nifti import ...`` works.

The geometry lives in ``io.geometry``, NIfTI through nibabel in ``io.nibabel_io``, and the
format-independent readers and writers (NIfTI, MetaImage, NRRD, ... chosen by file ending or
``dataset.json``) in ``io.image_io``; new code imports from those.
"""

from nnsam3d.io.geometry import (  # noqa: F401
    ImageGeometry,
    ImageReadError,
    canonical_spacing,
    from_canonical,
    to_canonical,
)
from nnsam3d.io.image_io import (  # noqa: F401
    read_channels,
    read_segmentation,
    read_volume,
    read_volume_in_file_order,
    write_segmentation,
    write_volume,
)
from nnsam3d.io.nibabel_io import load_nifti  # noqa: F401
