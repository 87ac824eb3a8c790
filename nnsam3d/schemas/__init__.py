"""The typed, versioned JSON files handed from one stage to the next.

``fingerprint.DatasetFingerprint`` (``dataset_fingerprint.json``) is written by the planners and
read by the planner; ``plans.Plans`` (``nnsam3d_plans.json``) is written by the planner and read by
preprocessing, the trainers and the predictor. They live below every stage so that a stage
depends on the file format of the one before it, not on its code.
"""
