"""The pieces every job is built from, a training run or a command on one.

steps (the pure train and eval steps and the optimiser), ema (the weight
average), tta (test-time augmentation inside the eval step), input_pipeline
and augment (grain loaders, global batches), multihost (the mesh, batch
sharding, joining hosts, bounded barriers), faults (preemption, the
non-finite guard), checkpointing (orbax), run_config (the config pinned in a
workdir), config_checks (named errors for bad config values), run_log
(metrics.jsonl and TensorBoard events), cli (what the commands share).

May import: danil_jax.method, danil_jax.models, data_prep and configs. Not
evaluation, trainer or experiments, nor the command modules.
"""
