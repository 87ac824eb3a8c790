"""3DMedSAM: SAM's image encoder adapted to 3D, 3D adapters, a multi-scale 3D decoder.

The bottom layer of nnsam3d: imports nothing else from the package. Entry points:
``network.build_network`` / ``network.count_parameters``, ``memory_model.estimate_training_memory``,
``sam_checkpoints`` (find, download, read SAM's files). See ``README.md`` in this folder.
"""
