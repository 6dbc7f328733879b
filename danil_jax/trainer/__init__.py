"""The trainer: `train.train_and_evaluate(config, workdir)`.

train (one run, from data and initial state to the final report, in marked
sections), train_loop (the epochs of compiled steps, per-epoch evaluation,
and the parts of a run its stages share).

May import: danil_jax.method, models, runtime and evaluation, data_prep and
configs. Not experiments, nor the command modules.
"""
