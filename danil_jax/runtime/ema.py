"""Weight EMA: an exponential moving average of the model's weights.

With `config.optim.ema_decay` = d > 0 the train state keeps, beside the raw
weights, their average `state.ema` = {'params', 'batch_stats'}: it starts as
the initial weights, and the step that takes the state from step t to t + 1
(t = 0, 1, ...) updates it with the weights it produced,

    d_t = min(d, (1 + t) / (10 + t))
    ema <- d_t * ema + (1 - d_t) * weights_{t+1}

the warm-up of TensorFlow's ExponentialMovingAverage(num_updates=t): early
on, when the weights move fast, the average forgets the initial ones within
a few steps. d_t reaches d only at t = (10 d - 1) / (1 - d) (d = 0.99: step
890; 0.999: step 8990), so on a shorter run every d above d_t of its last
step gives the same average, over about the last (10 + t) / 9 steps. The
update runs inside the compiled train step (trainer/train_step.py), on arrays
sharded like the parameters; a step the non-finite guard refuses leaves the
average as it was. With d = 0 (the default, the paper's setting) the state
and its checkpoints hold no average and nothing is computed.

The BatchNorm running statistics are averaged with the parameters, as
timm's ModelEmaV2/V3 average the whole state_dict, buffers included: the raw
statistics track the activations of the raw weights, which the averaged
weights are not; averaged statistics span the same steps as the averaged
parameters. (Recomputing them over the training set for the averaged
weights, as SWA's bn_update does, would be exact but costs a pass over the
data at every evaluation.)

Which weights are scored is `weights`: 'ema' or 'raw'. `default_weights`
says which a run reports; `select` puts them where the model reads its
weights.
"""

from __future__ import annotations

import sys

from absl import logging
import jax
import jax.numpy as jnp

KEY = 'ema'  # the train state's field and the checkpoint tree's key
WEIGHTS = ('ema', 'raw')


def decay_at(decay: float, step) -> jax.Array:
  """d_t = min(d, (1 + t) / (10 + t)) for the step from t to t + 1."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def weights(params, batch_stats) -> dict:
  """What the average covers: parameters and BatchNorm statistics."""
  return dict(params=params, batch_stats=batch_stats)


def init(params, batch_stats) -> dict:
  """The average before any step: a copy of the weights (its own buffers,
  so donating the train state never donates one buffer twice)."""
  return jax.tree.map(jnp.copy, weights(params, batch_stats))


def update(average: dict, new_weights: dict, *, decay: float, step) -> dict:
  """The average after the step from `step` to `step + 1`, which produced
  `new_weights`."""
  d = decay_at(decay, step)
  return jax.tree.map(lambda e, w: d * e + (1.0 - d) * w, average,
                      new_weights)


def default_weights(config) -> str:
  """The weights a run reports and selects its best checkpoint by: 'ema'
  when it keeps an average and config.eval.use_ema, else 'raw'. A config
  from before these keys existed keeps no average."""
  decay = config.optim.get('ema_decay', 0.0)
  return 'ema' if decay > 0 and config.eval.get('use_ema', True) else 'raw'


def select(state, which: str):
  """`state` with the `which` weights ('ema' or 'raw') in params and
  batch_stats, where eval_step and the commands read them."""
  if which not in WEIGHTS:
    raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {which!r}")
  if which == 'raw':
    return state
  average = getattr(state, KEY, None)
  if average is None:
    raise ValueError(
        'no EMA weights: the run keeps no weight average '
        '(config.optim.ema_decay = 0); use the raw weights')
  return state.replace(**average)


# ------------------------------------------------------------ checkpoints --
# A checkpoint and the state it is restored into may disagree on whether
# they hold an average: a run from before config.optim.ema_decay (or trained
# with 0) resumed with an average, or the reverse after
# config.faults.allow_config_change. The rest of the checkpoint is still the
# run's: restore it, not treat it as damaged.


def restore_target(state_tree: dict, saved_keys) -> dict:
  """The tree to restore from a checkpoint whose state holds `saved_keys`."""
  if KEY in state_tree and KEY not in saved_keys:
    return {k: v for k, v in state_tree.items() if k != KEY}
  if KEY in saved_keys and KEY not in state_tree:
    # Restored to be dropped: shaped and sharded like the weights it averages.
    return dict(state_tree, **{KEY: weights(state_tree['params'],
                                            state_tree['batch_stats'])})
  return state_tree


def complete(restored: dict, state_tree: dict, where) -> dict:
  """`restored` (from `restore_target`'s tree) in the structure of
  `state_tree`: an average it lacks starts from the restored weights, as
  timm starts model_ema from a checkpoint without one."""
  restored = dict(restored)
  if KEY in state_tree and KEY not in restored:
    message = (f'checkpoint {where} holds no weight EMA (saved with '
               'config.optim.ema_decay = 0 or an older danil-jax): the EMA '
               'starts from its weights')
    logging.warning(message)
    print(f'warning: {message}', file=sys.stderr, flush=True)
    restored[KEY] = init(restored['params'], restored['batch_stats'])
  elif KEY not in state_tree:
    restored.pop(KEY, None)
  return restored
