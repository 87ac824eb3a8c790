"""After cross-validation: choose the trainer (or ensemble) and the postprocessing
(``nnsam3d_find_best_configuration``), from the folds' validation predictions."""
