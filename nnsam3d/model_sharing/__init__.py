"""Sharing a trained model, as in nnU-Net: one zip file out (:mod:`.export`), into a results
folder (:mod:`.install`), or straight into prediction (``nnsam3d_predict -m``, :mod:`.model_zip`).

The zip holds one model folder, laid out as in ``$nnSAM3D_results``, so that installing is
extracting it there::

    DatasetXXX_Name/TRAINER__PLANS/
        model_card.json  MODEL_CARD.md      what the model is (:mod:`.model_card`)
        plans.json  dataset.json            what it was trained with (from its checkpoints)
        postprocessing.json                 when nnsam3d_find_best_configuration chose one
        fold_K/checkpoint_final.pth, checkpoint_best.pth (those present), training_log.txt,
               validation/summary.json
"""
