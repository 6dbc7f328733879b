"""Pure training and evaluation steps (no I/O), for Base, OHEM and DANIL.

The steps take and return globally sharded arrays; `train.py` jits them over
the device mesh. BatchNorm running statistics are taken from the one forward
pass of the step (for DANIL, the forward inside the input VJP).
"""

import functools
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from danil_jax.method import losses
from danil_jax.method import misclassified_only as misclassified_only_lib
from danil_jax.runtime import ema as ema_lib
from danil_jax.runtime import tta as tta_lib

METHODS = ('base', 'ohem', 'danil')


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # base key; each step folds in its step number
  # The weight EMA {'params', 'batch_stats'} (runtime/ema.py); None when
  # config.optim.ema_decay = 0: no arrays, nothing computed or saved.
  ema: Any = None


def make_optimizer(optim, steps_per_epoch: int,
                   num_epochs: int) -> optax.GradientTransformation:
  """SGD as in the paper, with optional momentum, weight decay and schedule."""
  total_steps = max(1, steps_per_epoch * num_epochs)
  warmup_steps = int(optim.warmup_epochs * steps_per_epoch)
  if optim.schedule == 'constant':
    schedule = optax.schedules.constant_schedule(optim.learning_rate)
    if warmup_steps:
      schedule = optax.schedules.join_schedules(
          [optax.schedules.linear_schedule(0.0, optim.learning_rate,
                                           warmup_steps), schedule],
          [warmup_steps])
  elif optim.schedule == 'cosine':
    schedule = optax.schedules.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, warmup_steps, total_steps)
  else:
    raise ValueError(f"config.optim.schedule must be 'constant' or 'cosine', "
                     f'got {optim.schedule!r}')
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


def _forward_fn(state: TrainState, params, rng) -> Callable:
  """x -> (logits, batch_stats updates) in training mode."""

  def logits_fn(x):
    return state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})

  return logits_fn


MAP_DTYPES = ('compute', 'float32')


def _eval_logits_fn(state: TrainState, map_dtype: str = 'compute') -> Callable:
  """(params, x) -> logits with the running BatchNorm statistics.

  `map_dtype='float32'` runs it through a float32 copy of the model (the
  parameters are float32 already), whatever the model's compute dtype.
  """
  if map_dtype not in MAP_DTYPES:
    raise ValueError(f'map_dtype must be one of {MAP_DTYPES}, got '
                     f'{map_dtype!r}')
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


def _loss(params, state, batch, rng, *, method: str, lam: float, eps: float,
          keep_ratio: float, reduction: str = 'per_image'):
  """Returns (loss, (aux, batch_stats updates)) for one method."""
  logits_fn = _forward_fn(state, params, rng)
  images, labels = batch['image'], batch['label']
  if method == 'danil':
    loss, aux = losses.danil_loss(logits_fn, images, labels, lam=lam, eps=eps,
                                  has_aux=True, reduction=reduction)
    return loss, (aux, aux.pop('model_aux'))
  if method not in METHODS:
    raise ValueError(f'config.method must be one of {METHODS}, got {method!r}')
  logits, model_updates = logits_fn(images)
  if method == 'base':
    loss = losses.cross_entropy_loss(logits, labels)
  else:
    loss = losses.ohem_loss(logits, labels, keep_ratio)
  misclassified = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  aux = dict(ce=losses.cross_entropy_loss(logits, labels),
             distraction=jnp.zeros((), jnp.float32),
             misclassified=misclassified, logits=logits)
  return loss, (aux, model_updates)


def train_step(state: TrainState, batch, *, method: str, lam: float = 1e-5,
               eps: float = 1e-4, keep_ratio: float = 0.7,
               skip_correct: bool = False, reduction: str = 'per_image',
               misclassified_only: bool = False, map_dtype: str = 'compute',
               ema_decay: float = 0.0):
  """One SGD step; returns the new state and scalar metrics.

  `ema_decay` > 0 updates the state's weight EMA (ema.py; the state must
  have one, create_train_state(ema=True)) with the step's new weights.

  `misclassified_only` (DANIL only, opt-in; `misclassified_only.py`): each
  image's maps with the running BatchNorm statistics, the double backprop
  over the misclassified images only, Ld in either reading (`reduction`).
  It is another loss than the exact batch-coupled one, meant for late
  training. Its metrics add `bucket` (the capacity that ran, 0: none) and
  `bucket_<c>` (1 where capacity c ran: its mean over steps is how often).
  `map_dtype` ('compute' or 'float32'): the dtype of that mode's map
  forward, input VJP and double backprop; L+c and the BatchNorm updates keep
  the model's compute dtype. The exact loss takes its maps from the one
  train-mode forward, so there it must be 'compute'. The mode already costs
  a plain step where nothing is misclassified, so `skip_correct` changes
  nothing in it.

  `skip_correct` (DANIL only): when no sample of the global batch is
  misclassified, Ld = 0 (Eq. 5) and the gradient is exactly the plain L+c
  one; compute only that, at the cost of a plain step, instead of the double
  backprop. The price is one extra forward on every other batch (see
  `_value_and_grad_skipping_correct`); worth it late in training, when most
  batches are classified correctly (the `misclassified` metric says).
  """
  if ema_decay and state.ema is None:
    raise ValueError(f'ema_decay={ema_decay} needs a state with a weight '
                     'EMA: create_train_state(..., ema=True)')
  rng = jax.random.fold_in(state.rng, state.step)
  loss_fn = functools.partial(_loss, state=state, batch=batch, rng=rng,
                              method=method, lam=lam, eps=eps,
                              keep_ratio=keep_ratio, reduction=reduction)
  if method == 'danil' and map_dtype != 'compute' and not misclassified_only:
    raise ValueError(f'map_dtype={map_dtype!r} needs misclassified_only=True: '
                     "the exact loss takes its maps from the step's one "
                     'forward (a float32 map there would need a second, '
                     'float32 forward)')
  if method == 'danil' and misclassified_only:
    # Opt-in: per-image maps with running BatchNorm statistics, double
    # backprop over the misclassified images only (misclassified_only.py).
    (loss, (aux, model_updates)), grads = misclassified_only_lib.value_and_grad(
        functools.partial(loss_fn, method='base'),
        _eval_logits_fn(state, map_dtype), state.params, batch, lam=lam,
        eps=eps, reduction=reduction)
  elif method == 'danil' and skip_correct:
    (loss, (aux, model_updates)), grads = _value_and_grad_skipping_correct(
        loss_fn, functools.partial(loss_fn, method='base'), state.params)
  else:
    (loss, (aux, model_updates)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
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
  if 'skipped' in aux:  # 1 where skip_correct took the plain gradient
    metrics['skipped'] = aux['skipped']
  if 'bucket' in aux:  # misclassified_only: images double-backpropagated
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
  next step draws the next batch and its own dropout key (`train.py` decides
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


def _value_and_grad_skipping_correct(danil_loss_fn, plain_loss_fn, params):
  """`value_and_grad(danil_loss_fn)`, with Ld's double backprop skipped when
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
  loss, pullback, (aux, updates) = jax.vjp(plain_loss_fn, params,
                                           has_aux=True)
  any_misclassified = jnp.any(aux['misclassified'] > 0)

  def metrics(aux, skipped):
    return dict({k: aux[k] for k in ('ce', 'distraction', 'misclassified')},
                skipped=jnp.float32(skipped))

  def danil(_):
    (value, (danil_aux, danil_updates)), grads = jax.value_and_grad(
        danil_loss_fn, has_aux=True)(params)
    return value, metrics(danil_aux, 0.0), danil_updates, grads

  def plain(_):
    (grads,) = pullback(jnp.ones_like(loss))
    return loss, metrics(aux, 1.0), updates, grads

  value, aux, updates, grads = jax.lax.cond(any_misclassified, danil, plain,
                                            None)
  return (value, (aux, updates)), grads


def distraction_gradient_share(state: TrainState, batch, *, lam: float,
                               eps: float, reduction: str = 'per_image',
                               misclassified_only: bool = False,
                               map_dtype: str = 'compute'):
  """How much the DANIL term moves the parameter gradient on this batch.

  Returns ||g_d|| / ||g_ce + g_d|| (`distraction_grad_share`) and
  ||g_d|| / ||g_ce|| (`distraction_grad_ratio`), with g_ce and g_d the
  parameter gradients of L+c and lam * Ld (Eq. 6) of the loss `train_step`
  trains with the same arguments (`reduction`: either reading;
  `misclassified_only`, `map_dtype`: that mode's Ld). Both pull back through
  the same forward, so this costs about one extra backward (in the
  misclassified-only mode, one more step of it); call it on logging steps
  only.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if misclassified_only:
    plain = functools.partial(_loss, state=state, batch=batch, rng=rng,
                              method='base', lam=lam, eps=eps, keep_ratio=1.0)
    (_, g_ce), (_, g_ld), _, _ = misclassified_only_lib.terms(
        plain, _eval_logits_fn(state, map_dtype), state.params, batch,
        eps=eps, reduction=reduction)
    return _shares(g_ce, jax.tree.map(lambda g: lam * g, g_ld))

  def terms(params):
    _, aux = losses.danil_loss(_forward_fn(state, params, rng), batch['image'],
                               batch['label'], lam=lam, eps=eps, has_aux=True,
                               reduction=reduction)
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


def eval_step(state: TrainState, batch, tta: str = 'none'):
  """Float32 softmax probabilities (and their logarithm), predictions and
  the masked loss sum for one (possibly padded) batch.

  With test-time augmentation (runtime.tta) the probabilities are the mean
  over each image's transformed copies, run as one batch; the loss is then
  the cross-entropy of that mean.
  """
  logits = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      tta_lib.expand(batch['image'], tta), train=False).astype(jnp.float32)
  probabilities, log_probabilities = tta_lib.average(logits, tta)
  mask = batch['mask'].astype(jnp.float32)
  ce = -jnp.take_along_axis(log_probabilities, batch['label'][:, None],
                            axis=-1)[:, 0]
  return dict(prediction=jnp.argmax(log_probabilities, -1),
              label=batch['label'], mask=batch['mask'],
              ce_sum=jnp.sum(ce * mask), probabilities=probabilities,
              log_probabilities=log_probabilities)


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

