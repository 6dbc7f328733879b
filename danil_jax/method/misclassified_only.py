"""DANIL's double backprop over the misclassified images only (opt-in).

Ld (Eq. 5) is zero for a correctly classified image. The exact loss
(`losses.danil_loss`) still needs the whole batch: each image's map
A+ - A- (Eq. 2) is an input VJP through the train-mode forward, whose
BatchNorm statistics couple the images of the batch.

This mode (`config.danil.misclassified_only = True`, a form of the train
step in trainer/train_step.py) takes each image's maps through
a forward with fixed BatchNorm statistics, the running ones (the eval-mode
forward: Eq. 2 for one image x0, no dropout), so the maps are per image and
only the misclassified images need them. Those are gathered into the
smallest of a few static capacity buckets (`BUCKET_FRACTIONS` of the batch)
that holds them all, chosen with `lax.switch` from their count (none: no
double backprop at all), and the input VJP and its reverse run over that
bucket only. The cross-entropy L+c (Eq. 3) and the BatchNorm updates come
from the usual train-mode forward. Both readings of Ld on a batch
(`reduction`, `losses.danil_loss`) need the misclassified images' maps only:
a correct image's map is zero. With `map_dtype='float32'`
(trainer/train_step.py) the maps' forward, input VJP and double backprop run
through a float32 copy of the model, whatever the compute dtype of L+c.

The mode is another loss, not an approximation of the exact one, which
stays the default: the derivative through the batch statistics, which any
per-image map drops, carries most of the exact Ld gradient. Use it where a
step's cost matters and few images are misclassified (late in training,
fine-tuning), as its cost follows the bucket; early, when most images are
wrong and the running statistics lag the batch's, it costs more than the
exact loss. benchmarks/README.md has the measurements (step costs, and the
running against the batch's statistics for the maps).
"""

import math
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from danil_jax.method import losses

# Bucket capacities as fractions of the batch.
BUCKET_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1)
# config.danil.map_dtype: the maps' forward in the model's compute dtype, or
# through a float32 copy of the model.
MAP_DTYPES = ('compute', 'float32')


def capacities(batch_size: int) -> list[int]:
  """The distinct bucket sizes for `batch_size`, ascending."""
  return sorted({max(1, math.ceil(f * batch_size)) for f in BUCKET_FRACTIONS})


def distraction_value_and_grad(logits_fn: Callable, params, x, labels, pred,
                               *, eps: float,
                               reduction: str = losses.DEFAULT_REDUCTION):
  """(Ld, dLd/dparams, bucket) over the images with pred != labels.

  Each map is the input VJP of `logits_fn(params, x_i)` for image i alone
  (`logits_fn` must not couple the images of a batch, e.g. BatchNorm with
  fixed statistics), d_i = ||A+_i - A-_i||^2 of the per-image maps (Eq. 2),
  m_i = 1 where pred_i != y_i; with the reading `reduction`
  (`losses.danil_loss`):

    'per_image': Ld = (1/B) sum_i m_i / (d_i + eps)    (Eq. 5, batch mean)
    'batch':     Ld = 1 / (D + eps) if any m_i else 0,  D = (1/B^2) sum_i d_i

  In the batch reading the maps are those of the batch-mean cross-entropy,
  (1/B) J_i^T (onehot(y-_i) - onehot(y+_i)), and a correctly classified image
  has a zero cotangent, hence a zero map: D sums over the misclassified
  images only, and both readings need the bucket's maps alone. `pred` is the
  pseudo label y- (Eq. 4). `bucket` is the capacity used (0: none).
  """
  losses.check_reduction(reduction, 'misclassified_only')
  batch = x.shape[0]
  misclassified = pred != labels
  count = jnp.sum(misclassified.astype(jnp.int32))
  sizes = capacities(batch)
  # The batch reading's maps are 1/B of the per-image ones.
  scale = 1.0 / batch if reduction == 'batch' else 1.0

  def bucket(capacity):
    def run(_):
      (index,) = jnp.nonzero(misclassified, size=capacity, fill_value=0)
      # Slots past `count` repeat image 0: masked out of cotangent and sum.
      valid = jnp.arange(capacity) < count

      def ld(p):
        logits, input_vjp = jax.vjp(lambda z: logits_fn(p, z), x[index])
        k = logits.shape[-1]
        cotangent = (jax.nn.one_hot(pred[index], k, dtype=logits.dtype)
                     - jax.nn.one_hot(labels[index], k, dtype=logits.dtype))
        cotangent = cotangent * (valid[:, None] * scale).astype(logits.dtype)
        (difference,) = input_vjp(cotangent)
        difference = difference.astype(
            jnp.promote_types(difference.dtype, jnp.float32))
        distance = jnp.sum(jnp.square(difference),
                           axis=tuple(range(1, difference.ndim)))
        if reduction == 'per_image':
          return jnp.sum(jnp.where(valid, 1.0 / (distance + eps), 0.0)) / batch
        # count >= 1 in every bucket: the 'any misclassified' factor is 1.
        return 1.0 / (jnp.sum(jnp.where(valid, distance, 0.0)) + eps)

      value, grads = jax.value_and_grad(ld)(params)
      return value, grads, jnp.int32(capacity)
    return run

  def none(_):
    # The maps have x's dtype, their norms at least float32.
    return (jnp.zeros((), jnp.promote_types(x.dtype, jnp.float32)),
            jax.tree.map(jnp.zeros_like, params),
            jnp.int32(0))

  # 0 -> none; else the first capacity >= count.
  branch = jnp.searchsorted(jnp.asarray([0] + sizes), count)
  return lax.switch(branch, [none] + [bucket(c) for c in sizes], None)


def terms(plain_loss_fn: Callable, logits_fn: Callable, params, batch, *,
          eps: float, reduction: str = losses.DEFAULT_REDUCTION):
  """L+c and Ld (Eq. 3, 5) of this mode, each with its parameter gradient.

  `plain_loss_fn(params) -> (L+c, (aux, model_updates))` is the train-mode
  cross-entropy loss (aux holding `logits`, whose argmax is y-, Eq. 4);
  `logits_fn(params, x)` the fixed-statistics forward of the maps;
  `reduction` the reading of Ld (`distraction_value_and_grad`). Returns
  `((ce, ce_grads), (ld, ld_grads), capacity, (aux, model_updates))`.
  """
  (ce, (aux, updates)), ce_grads = jax.value_and_grad(
      plain_loss_fn, has_aux=True)(params)
  pred = lax.stop_gradient(jnp.argmax(aux['logits'], -1))
  ld, ld_grads, capacity = distraction_value_and_grad(
      logits_fn, params, batch['image'], batch['label'], pred, eps=eps,
      reduction=reduction)
  return (ce, ce_grads), (ld, ld_grads), capacity, (aux, updates)


def value_and_grad(plain_loss_fn: Callable, logits_fn: Callable, params,
                   batch, *, lam: float, eps: float,
                   reduction: str = losses.DEFAULT_REDUCTION):
  """`jax.value_and_grad` of L+c + lam * Ld (Eq. 6) in this mode.

  Arguments as `terms`. Returns what `value_and_grad(..., has_aux=True)`
  would, with aux's `distraction` set to Ld and `bucket` to the capacity
  that ran.
  """
  (ce, grads), (ld, ld_grads), capacity, (aux, updates) = terms(
      plain_loss_fn, logits_fn, params, batch, eps=eps, reduction=reduction)
  grads = jax.tree.map(lambda g, d: g + lam * d.astype(g.dtype), grads,
                       ld_grads)
  aux = dict(aux, distraction=ld, bucket=capacity)
  return (ce + lam * ld, (aux, updates)), grads
