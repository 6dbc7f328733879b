"""Losses: plain cross-entropy (Base), OHEM, and DANIL (Gong, Ma & Zheng 2020).

All three are pure functions of JAX arrays, usable with any model.

DANIL (§2, Algorithm 1). For an image x with label y+ and logits f(x):

  L+c = -y+ . log softmax(f(x))                                       (Eq. 3)
  L-c = -y- . log softmax(f(x)),  y- = onehot(argmax f(x))            (Eq. 4)
  A+  = dL+c/dx,  A- = dL-c/dx   (neuron intrinsic response maps)     (Eq. 2)
  Ld  = 1 / (||A+ - A-||^2 + eps)  if argmax f(x) != y, else 0        (Eq. 5)
  L   = L+c + lam * Ld                                                (Eq. 6)

Algorithm 1 is written for one image; a batch of B images x_1..x_B, with
m_i = 1 where image i is misclassified, can read it two ways (`reduction`):

  'per_image' (each image its own Algorithm 1, then averaged):
    A+_i - A-_i = d(sum_j L+c_j)/dx_i - d(sum_j L-c_j)/dx_i
    d_i = ||A+_i - A-_i||^2,   Ld = (1/B) sum_i m_i / (d_i + eps)
  'batch' (the natural batched PyTorch port: `F.cross_entropy` mean-reduced,
  one `autograd.grad(loss, x, create_graph=True)` for the whole batch):
    A+ - A- = d(mean_j L+c_j)/dx - d(mean_j L-c_j)/dx   (every map 1/B of the
              per-image one)
    D = ||A+ - A-||^2 over the whole [B, ...] tensor = (1/B^2) sum_i d_i
    Ld = 1 / (D + eps)  if any m_i, else 0

and in both L = mean_i L+c_i + lam * Ld. At the same lam the batch reading
weighs the term far more: with d_i >> eps its Ld is about B^2 / sum_i d_i
against (1/B) sum_i m_i / d_i: with alike d_i and a fraction m of the batch
misclassified, B / m^2 times more Ld and parameter gradient.

Because L+c - L-c = z_{y-} - z_{y+} (the log-sum-exp cancels),

  A+ - A- = J^T (onehot(y-) - onehot(y+)),   J = df/dx,

(divided by B in the batch reading) so a single vector-Jacobian product
through the one forward pass gives the difference directly: one forward, one
input VJP, and then the outer `jax.grad` differentiates through that VJP
(double backprop).
"""
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (the paper's Base, Eq. 3)."""
  return jnp.mean(_per_sample_ce(logits, labels))


def ohem_loss(logits: jax.Array, labels: jax.Array,
              keep_ratio: float) -> jax.Array:
  """Online hard example mining: mean CE over the hardest samples of the batch.

  Keeps the `ceil(keep_ratio * B)` samples with the largest cross-entropy; the
  choice is made on stop-gradient losses so only the kept samples' losses are
  differentiated.
  """
  if not 0.0 < keep_ratio <= 1.0:
    raise ValueError(f'ohem keep_ratio must be in (0, 1], got {keep_ratio}')
  ce = _per_sample_ce(logits, labels)
  k = max(1, math.ceil(keep_ratio * ce.shape[0]))
  _, hardest = jax.lax.top_k(jax.lax.stop_gradient(ce), k)
  return jnp.mean(ce[hardest])


REDUCTIONS = ('per_image', 'batch')


def check_reduction(reduction: str, caller: str) -> None:
  """Raises ValueError naming `caller` unless `reduction` is a reading."""
  if reduction not in REDUCTIONS:
    raise ValueError(f'{caller} reduction must be one of {REDUCTIONS}, got '
                     f'{reduction!r}')


# The trainer's reading (configs/default.py, danil.reduction): the one in
# which the paper's lam = 1e-5 acts.
DEFAULT_REDUCTION = 'batch'


def danil_loss(
    logits_fn: Callable[[jax.Array], Any],
    x: jax.Array,
    labels: jax.Array,
    *,
    lam: float = 1e-5,
    eps: float = 1e-4,
    has_aux: bool = False,
    reduction: str = DEFAULT_REDUCTION,
) -> tuple[jax.Array, dict[str, Any]]:
  """DANIL total loss L = L+c + lam * Ld (Eq. 6) for a batch.

  Args:
    logits_fn: `x -> logits [B, K]`, or `x -> (logits, model_aux)` when
      `has_aux` (e.g. a Flax apply returning BatchNorm updates). Any JAX
      callable; parameters it closes over receive gradients through both terms.
    x: the network input [B, ...] (the images the maps A+/A- live on).
    labels: int [B] ground-truth classes y+.
    lam: weight of the distraction loss (Eq. 6); the paper uses 1e-5.
    eps: stabiliser of Eq. 5; the paper uses 1e-4.
    has_aux: whether `logits_fn` returns `(logits, model_aux)`.
    reduction: how Algorithm 1 (one image) reads on a batch (module
      docstring): 'batch' (the default, as the trainer's
      `config.danil.reduction`), the PyTorch port's one Ld from the maps of
      the mean cross-entropy, the norm over the whole batch tensor; or
      'per_image', one Ld per image from its own maps, averaged. The paper's
      lam = 1e-5 acts only in 'batch': in 'per_image' the term's share of
      the parameter gradient is about 1e-4 (the demo, README), plain
      cross-entropy in practice, so that reading needs a larger lam. B is
      `x.shape[0]`:
      under `jax.jit` over a device mesh that is the global batch, so neither
      reading depends on the number of devices.

  Returns:
    `(loss, aux)` where aux holds `ce` (L+c, batch mean), `distraction` (Ld:
    per_image, the batch mean over all samples, correct ones contributing 0;
    batch, the one Ld), `misclassified` (float [B], 1 where argmax != label),
    `distance` (float32 [B], each image's part of ||A+ - A-||^2 at the
    reading's scale: per_image d_i; batch d_i / B^2, summing to D), `logits`
    and, with `has_aux`, `model_aux` from the single forward pass.

  A batch with no misclassified sample has a zero cotangent, hence a map
  difference of exactly zero, Ld = 0 and the plain L+c gradient: in the
  batch reading 1/(0 + eps) would be a constant with zero gradient but would
  report a loss of 1/eps, so it is set to 0 as Algorithm 1 line 11 does per
  image. Such a batch still pays for the double backprop;
  the train step with `skip_correct=True` (trainer/train_step.py) skips it
  at the step level.
  """
  check_reduction(reduction, 'danil_loss')
  if has_aux:
    logits, input_vjp, model_aux = jax.vjp(logits_fn, x, has_aux=True)
  else:
    logits, input_vjp = jax.vjp(logits_fn, x)
    model_aux = None
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
        f'danil_loss expects logits [B, K] and labels [B]; got logits '
        f'{logits.shape} and labels {labels.shape}')
  batch_size, num_classes = logits.shape
  ce = _per_sample_ce(logits, labels)
  # y- is a constant pseudo label (Algorithm 1, lines 2-6).
  pred = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  misclassified = (pred != labels).astype(_at_least_f32(logits.dtype))
  cotangent = (jax.nn.one_hot(pred, num_classes, dtype=logits.dtype)
               - jax.nn.one_hot(labels, num_classes, dtype=logits.dtype))
  if reduction == 'batch':  # the maps of the batch-mean cross-entropy
    cotangent = cotangent / batch_size
  (map_difference,) = input_vjp(cotangent)  # A+ - A-
  # The map and its norm in at least float32, whatever the compute dtype.
  map_difference = map_difference.astype(_at_least_f32(x.dtype))
  distance = jnp.sum(jnp.square(map_difference),
                     axis=tuple(range(1, map_difference.ndim)))
  if reduction == 'per_image':
    # Correct samples have a zero cotangent, hence a zero map; the mask makes
    # their Ld exactly 0 rather than 1/eps (Algorithm 1, line 11).
    distraction = jnp.mean(misclassified / (distance + eps))
  else:
    any_misclassified = jnp.max(misclassified)  # 1.0 or 0.0
    distraction = any_misclassified / (jnp.sum(distance) + eps)
  ce_mean = jnp.mean(ce)
  loss = ce_mean + lam * distraction
  aux = dict(ce=ce_mean, distraction=distraction, misclassified=misclassified,
             distance=distance, logits=logits)
  if has_aux:
    aux['model_aux'] = model_aux
  return loss, aux


def _per_sample_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  # At least float32 so bf16 logits do not lose the small differences DANIL
  # acts on.
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(_at_least_f32(logits.dtype)), labels)


def _at_least_f32(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)
