"""The train step and its optimiser: pure functions of the state and a batch.

`make_train_step(config)` returns the run's step, `(state, batch) ->
(state, metrics)`, for config.method (danil_jax.method.registry); DANIL's
gradient is computed one of three ways, chosen there once:

  exact               jax.value_and_grad of L+c + lam * Ld (Eq. 6), the maps
                      from the step's one training-mode forward;
  skip_correct        the same, with the double backprop skipped on batches
                      where nothing is misclassified (Ld = 0, Eq. 5);
  misclassified_only  another loss, opt-in: each image's maps with the
                      running BatchNorm statistics, double backprop over the
                      misclassified images only (method/misclassified_only).

Every step then applies the gradient, takes the BatchNorm statistics of its
forward, updates the weight EMA and refuses a non-finite result. The steps
take and return globally sharded arrays; train.py jits them over the mesh.
"""

import functools
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from danil_jax.configs import default
from danil_jax.method import misclassified_only as misclassified_only_lib
from danil_jax.method import registry
from danil_jax.runtime import ema as ema_lib


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # base key; each step folds in its step number
  # The weight EMA {'params', 'batch_stats'} (runtime/ema.py); None when
  # config.optim.ema_decay = 0: no arrays, nothing computed or saved.
  ema: Any = None


# ------------------------------------------------------------- optimiser --


def _constant(optim, warmup_steps: int, total_steps: int):
  del total_steps  # a constant rate has no end
  schedule = optax.schedules.constant_schedule(optim.learning_rate)
  if not warmup_steps:
    return schedule
  return optax.schedules.join_schedules(
      [optax.schedules.linear_schedule(0.0, optim.learning_rate, warmup_steps),
       schedule], [warmup_steps])


def _cosine(optim, warmup_steps: int, total_steps: int):
  return optax.schedules.warmup_cosine_decay_schedule(
      0.0, optim.learning_rate, warmup_steps, total_steps)


# config.optim.schedule's values.
SCHEDULES = {'constant': _constant, 'cosine': _cosine}


def make_optimizer(optim, steps_per_epoch: int,
                   num_epochs: int) -> optax.GradientTransformation:
  """SGD as in the paper, with optional momentum, weight decay, warm-up and
  schedule (config.optim)."""
  schedule = SCHEDULES[optim.schedule](
      optim, int(optim.warmup_epochs * steps_per_epoch),
      max(1, steps_per_epoch * num_epochs))
  sgd = optax.sgd(schedule, momentum=optim.momentum or None,
                  nesterov=optim.nesterov)
  if optim.weight_decay:
    return optax.chain(optax.add_decayed_weights(optim.weight_decay), sgd)
  return sgd


def create_train_state(model, variables, tx, rng, *,
                       ema: bool = False) -> TrainState:
  """The state before step 0; with `ema`, a weight average (ema.py) that
  starts as these weights."""
  batch_stats = variables.get('batch_stats', {})
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=batch_stats, tx=tx, rng=rng,
      ema=ema_lib.init(variables['params'], batch_stats) if ema else None)


def state_to_checkpoint(state: TrainState) -> dict:
  """The arrays of a TrainState, as a plain tree orbax saves; the weight EMA
  only where the state keeps one, so a run without it saves what it did
  before the EMA existed."""
  tree = dict(params=state.params, batch_stats=state.batch_stats,
              opt_state=state.opt_state, step=state.step, rng=state.rng)
  if state.ema is not None:
    tree[ema_lib.KEY] = state.ema
  return tree


def state_from_checkpoint(state: TrainState, tree: dict) -> TrainState:
  return state.replace(**tree)


# ------------------------------------------------------- the loss's forms --


def _forward_fn(state: TrainState, params, rng) -> Callable:
  """x -> (logits, batch_stats updates) in training mode."""

  def logits_fn(x):
    return state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})

  return logits_fn


def _eval_logits_fn(state: TrainState, map_dtype: str = 'compute') -> Callable:
  """(params, x) -> logits with the running BatchNorm statistics.

  `map_dtype='float32'` runs it through a float32 copy of the model (the
  parameters are float32 already), whatever the model's compute dtype.
  """
  apply = state.apply_fn
  if map_dtype == 'float32':
    model = getattr(apply, '__self__', None)
    if not hasattr(model, 'dtype') or not hasattr(model, 'clone'):
      raise ValueError("map_dtype='float32' needs a TrainState whose apply_fn "
                       'is a Flax module with a `dtype` field (model.apply), '
                       f'got {apply!r}')
    apply = model.clone(dtype=jnp.float32).apply
  return lambda params, x: apply(
      {'params': params, 'batch_stats': state.batch_stats}, x, train=False)


def _loss_fn(method: str, options: dict, state: TrainState, batch,
             rng) -> Callable:
  """params -> (loss, (aux, batch_stats updates)) of `method` on `batch`."""

  def loss_fn(params):
    loss, aux = registry.METHODS[method].loss(
        _forward_fn(state, params, rng), batch['image'], batch['label'],
        **options)
    return loss, (aux, aux.pop('model_aux'))

  return loss_fn


# --------------------------------------------------- the gradient's forms --
# Each: (state, batch, rng) -> ((loss, (aux, batch_stats updates)), grads).


def _exact(method: str, options: dict) -> Callable:
  def value_and_grad(state, batch, rng):
    return jax.value_and_grad(_loss_fn(method, options, state, batch, rng),
                              has_aux=True)(state.params)
  return value_and_grad


def _skipping_correct(options: dict) -> Callable:
  """DANIL's value and gradient, with Ld's double backprop skipped when
  nothing in the batch is misclassified.

  The plain loss's forward runs first, keeping its pullback; its logits say
  whether any sample is misclassified. If none is, the pullback gives the
  gradient (a plain step in all); otherwise the full DANIL value and
  gradient are computed, forward included (one forward more than DANIL).
  Skipping inside `danil_loss` instead costs more: JAX's reverse mode of a
  `lax.cond` zero-fills the untaken branch's residuals, so the all-correct
  batch still cost 1.57x a plain step and 5.9x its memory (resnet50 on an
  H200, benchmarks/README.md).
  """

  def value_and_grad(state, batch, rng):
    params = state.params
    loss, pullback, (aux, updates) = jax.vjp(
        _loss_fn('base', {}, state, batch, rng), params, has_aux=True)

    def metrics(aux, skipped):
      return dict({k: aux[k] for k in ('ce', 'distraction', 'misclassified')},
                  skipped=jnp.float32(skipped))

    def danil(_):
      (value, (danil_aux, danil_updates)), grads = jax.value_and_grad(
          _loss_fn('danil', options, state, batch, rng), has_aux=True)(params)
      return value, metrics(danil_aux, 0.0), danil_updates, grads

    def plain(_):
      (grads,) = pullback(jnp.ones_like(loss))
      return loss, metrics(aux, 1.0), updates, grads

    value, aux, updates, grads = jax.lax.cond(
        jnp.any(aux['misclassified'] > 0), danil, plain, None)
    return (value, (aux, updates)), grads

  return value_and_grad


def _misclassified_only(options: dict, map_dtype: str) -> Callable:
  def value_and_grad(state, batch, rng):
    return misclassified_only_lib.value_and_grad(
        _loss_fn('base', {}, state, batch, rng),
        _eval_logits_fn(state, map_dtype), state.params, batch, **options)
  return value_and_grad


# --------------------------------------------------------------- the step --


def make_train_step(config) -> Callable:
  """The run's step `(state, batch) -> (state, metrics)` (module docstring).

  Its metrics: loss, ce, distraction (Ld), misclassified (the share of the
  batch), grad_norm, nonfinite (1 where the step was refused); `skipped`
  with skip_correct (1 where the plain gradient sufficed); `bucket` and
  `bucket_<c>` in the misclassified-only mode (the capacity that ran, and 1
  where capacity c ran: its mean over steps is how often).
  """
  method = registry.METHODS[config.method]
  options = registry.options(config.method, config)
  section = config[method.section] if method.section else None
  if method.has_distraction_term and section.misclassified_only:
    value_and_grad = _misclassified_only(options, section.map_dtype)
  elif method.has_distraction_term and section.skip_correct:
    value_and_grad = _skipping_correct(options)
  else:
    value_and_grad = _exact(config.method, options)
  return functools.partial(_train_step, value_and_grad=value_and_grad,
                           ema_decay=config.optim.ema_decay)


def step_for(method: str, **keys) -> Callable:
  """make_train_step of configs/default.py with config.method = `method` and
  `keys` set in its section (`ema_decay` in config.optim): a step outside a
  run, as tests and benchmarks take one."""
  return make_train_step(_config_for(method, keys))


def _config_for(method: str, keys: dict):
  config = default.get_config()
  config.method = method
  if 'ema_decay' in keys:
    config.optim.ema_decay = keys.pop('ema_decay')
  section = registry.METHODS[method].section
  if keys and not section:
    raise ValueError(f'method {method!r} takes no options, got {sorted(keys)}')
  if keys:
    config[section].update(keys)
  return config


def _train_step(state: TrainState, batch, *, value_and_grad: Callable,
                ema_decay: float):
  if ema_decay and state.ema is None:
    raise ValueError(f'ema_decay={ema_decay} needs a state with a weight '
                     'EMA: create_train_state(..., ema=True)')
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, (aux, model_updates)), grads = value_and_grad(state, batch, rng)
  new_state = state.apply_gradients(grads=grads)
  if model_updates:
    new_state = new_state.replace(batch_stats=model_updates['batch_stats'])
  if ema_decay:
    new_state = new_state.replace(ema=ema_lib.update(
        state.ema, ema_lib.weights(new_state.params, new_state.batch_stats),
        decay=ema_decay, step=state.step))
  grad_norm = optax.tree.norm(grads)
  new_state, nonfinite = _keep_old_state_if_nonfinite(state, new_state, loss,
                                                      grad_norm)
  metrics = dict(
      loss=loss, ce=aux['ce'], distraction=aux['distraction'],
      misclassified=jnp.mean(aux['misclassified']),
      grad_norm=grad_norm, nonfinite=nonfinite)
  if 'skipped' in aux:
    metrics['skipped'] = aux['skipped']
  if 'bucket' in aux:
    metrics['bucket'] = aux['bucket']
    for capacity in [0] + misclassified_only_lib.capacities(
        batch['label'].shape[0]):
      metrics[f'bucket_{capacity}'] = (aux['bucket'] == capacity).astype(
          jnp.float32)
  return new_state, metrics


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _keep_old_state_if_nonfinite(state: TrainState, new_state: TrainState,
                                 loss, grad_norm):
  """The non-finite guard: (state to continue from, 1.0 if refused else 0.0).

  A step whose loss, gradient norm, updated parameters or BatchNorm
  statistics hold a NaN or Inf keeps the old parameters, optimiser state and
  statistics (and weight EMA): nothing non-finite can reach the state, hence
  no checkpoint.
  The step counter still advances, so the batch counts as consumed and the
  next step draws the next batch and its own dropout key (train.py decides
  whether to stop, per config.faults.max_nonfinite_in_a_row).
  """
  finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            & _all_finite(new_state.params)
            & _all_finite(new_state.batch_stats))
  keep = lambda new, old: jnp.where(finite, new, old)
  guarded = new_state.replace(
      params=jax.tree.map(keep, new_state.params, state.params),
      opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
      batch_stats=jax.tree.map(keep, new_state.batch_stats,
                               state.batch_stats),
      ema=jax.tree.map(keep, new_state.ema, state.ema))
  return guarded, 1.0 - finite.astype(jnp.float32)


# ---------------------------------------------- does the term act at all? --


def make_gradient_share(config) -> Callable | None:
  """`(state, batch) -> gradient_share(...)` for the run's loss, None when
  config.method has no DANIL term."""
  method = registry.METHODS[config.method]
  if not method.has_distraction_term:
    return None
  section = config[method.section]
  return functools.partial(
      gradient_share, **registry.options(config.method, config),
      misclassified_only=section.misclassified_only,
      map_dtype=section.map_dtype)


def gradient_share(state: TrainState, batch, *, lam: float, eps: float,
                   reduction: str, misclassified_only: bool, map_dtype: str):
  """How much the DANIL term moves the parameter gradient on this batch.

  Returns ||g_d|| / ||g_ce + g_d|| (`distraction_grad_share`) and
  ||g_d|| / ||g_ce|| (`distraction_grad_ratio`), with g_ce and g_d the
  parameter gradients of L+c and lam * Ld (Eq. 6) of the loss the step
  trains with the same arguments (`reduction`: either reading;
  `misclassified_only`, `map_dtype`: that mode's Ld). Both pull back through
  the same forward, so this costs about one extra backward (in the
  misclassified-only mode, one more step of it); call it on logging steps
  only.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if misclassified_only:
    (_, g_ce), (_, g_ld), _, _ = misclassified_only_lib.terms(
        _loss_fn('base', {}, state, batch, rng),
        _eval_logits_fn(state, map_dtype), state.params, batch,
        eps=eps, reduction=reduction)
    return _shares(g_ce, jax.tree.map(lambda g: lam * g, g_ld))

  def terms(params):
    _, aux = registry.METHODS['danil'].loss(
        _forward_fn(state, params, rng), batch['image'], batch['label'],
        lam=lam, eps=eps, reduction=reduction)
    return aux['ce'], lam * aux['distraction']

  (ce, _), pullback = jax.vjp(terms, state.params)
  one, zero = jnp.ones_like(ce), jnp.zeros_like(ce)
  (g_ce,) = pullback((one, zero))
  (g_d,) = pullback((zero, one))
  return _shares(g_ce, g_d)


def _shares(g_ce, g_d) -> dict:
  norm_d = optax.tree.norm(g_d)
  norm_total = optax.tree.norm(jax.tree.map(jnp.add, g_ce, g_d))
  norm_ce = optax.tree.norm(g_ce)
  tiny = jnp.finfo(jnp.float32).tiny
  return dict(distraction_grad_share=norm_d / jnp.maximum(norm_total, tiny),
              distraction_grad_ratio=norm_d / jnp.maximum(norm_ce, tiny))
