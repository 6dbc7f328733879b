"""Evaluation as the field does it, shared by the trainer and the commands.

scoring (a split's predictions, calibration, report and output files),
metrics (per-benchmark metrics, patient-level AUROC, quadratic kappa),
calibration (ECE, Brier, temperature scaling), map_distance (each image's
||A+ - A-||^2, DANIL's mechanism, over a split), plots (training curves,
confusion, ROC, reliability and response-map PNGs), best_checkpoint (model
selection by a validation metric), trained_run (a finished run's state and
data: the library behind evaluate, predict and response_maps).

May import: danil_jax.method, models and runtime, data_prep and configs. Not
trainer or experiments, nor the command modules.
"""
