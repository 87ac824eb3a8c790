"""Training 3DMedSAM: ``nnsam3d_train DATASET FOLD [-tr TRAINER]``.

base_trainer   the default trainer (orchestration and the hooks variants override)
request        what a run is asked to do (TrainingRequest), its input errors
variants       the trainer family (full fine-tuning, no adapters, from scratch, short schedules)
registry       ``-tr NAME`` → trainer class (built-ins, ``module:Class``, entry points)
launch         one process, torchrun, or ``--num-gpus N`` local processes
splits         ``splits_final.json`` (nnU-Net's 5 folds, reused, user and nnU-Net files respected)
data_loading   random patches from the memory-mapped cases, foreground oversampling, workers
batch_streams  the training and pseudo-Dice streams of a fold, split over ranks
augmentation   batchgenerators pipeline (spatial, intensity, mirroring; in-plane when thin)
losses         Dice + cross-entropy with deep-supervision weights (ignore label left out)
optimization   AdamW, warm-up + decay, mixed precision, gradient clipping
time_budget    --time-budget-minutes: stop in time, decay fitted to the budget
pseudo_dice    per-epoch Dice estimate on validation patches and its moving average
checkpointing  checkpoint files and random-generator state
training_log   console lines, training_log.txt, progress.png
validation     whole-case validation with the predictor → validation/summary.json
distributed    process group, batch split over ranks, local process launcher
"""
