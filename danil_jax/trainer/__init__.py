"""The trainer: `train.train_and_evaluate(config, workdir)`.

train (one run read top to bottom: set-up, restore, the step loop, the
final report), train_step (the train step, its three gradient forms and the
optimiser), final_report (the last and best models scored and written),
config_checks (every rule on the config's values, in one place).

May import: danil_jax.method, models, runtime and evaluation, data_prep and
configs. Not experiments, nor the command modules.
"""
