"""The annotation server: MONAI Label's REST protocol over an nnsam3d model (``app``), its
datastore folder (``datastore``) and the conversion of saved corrections into a raw dataset
(``datastore_to_dataset``). Started by ``nnsam3d_serve``."""
