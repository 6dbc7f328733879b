"""The neuron intrinsic response maps of an image (the paper's Eq. 2, Fig. 3).

For an image x with label y+ and logits f(x):

  A+ = dL+c/dx,  L+c = -log softmax(f(x))[y+]                          (Eq. 3)
  A- = dL-c/dx,  L-c = -log softmax(f(x))[y-]                          (Eq. 4)

For display (Fig. 3) y- is the class the model is distracted by: its
prediction when that is wrong, otherwise the highest-scoring wrong class
(during training, `losses.danil_loss` takes y- = argmax and needs only the
difference A+ - A-, which is zero for correct samples).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp


def response_maps(logits_fn: Callable[[jax.Array], Any], x: jax.Array,
                  labels: jax.Array, *, has_aux: bool = False) -> dict:
  """A+ and A- of every image of the batch `x` [B, ...] (one forward pass).

  `logits_fn`: `x -> logits [B, K]` (or `(logits, aux)` with `has_aux`), as
  for `losses.danil_loss`. The maps are the per-image slices of the
  gradients of the summed losses, which are the per-image gradients when
  the images do not interact (a model in inference mode: BatchNorm with its
  running statistics).

  Returns a dict of `a_plus`, `a_minus` (shaped like x, float32 at least),
  `distance` ||A+ - A-||^2 [B], `y_minus` [B], `prediction` [B], `logits`.
  """
  def log_probs(x):
    out = logits_fn(x)
    logits = out[0] if has_aux else out
    return jax.nn.log_softmax(
        logits.astype(jnp.promote_types(logits.dtype, jnp.float32))), logits

  log_p, pullback, logits = jax.vjp(log_probs, x, has_aux=True)
  num_classes = logits.shape[-1]
  prediction = jnp.argmax(logits, axis=-1)
  wrong_logits = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool),
                           -jnp.inf, logits)
  y_minus = jnp.where(prediction == labels, jnp.argmax(wrong_logits, -1),
                      prediction)
  # L = -log p[y] per image, so its cotangent on log p is -onehot(y).
  (a_plus,) = pullback(-jax.nn.one_hot(labels, num_classes,
                                       dtype=log_p.dtype))
  (a_minus,) = pullback(-jax.nn.one_hot(y_minus, num_classes,
                                        dtype=log_p.dtype))
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  a_plus, a_minus = a_plus.astype(dtype), a_minus.astype(dtype)
  distance = jnp.sum(jnp.square(a_plus - a_minus),
                     axis=tuple(range(1, x.ndim)))
  return dict(a_plus=a_plus, a_minus=a_minus, distance=distance,
              y_minus=y_minus, prediction=prediction, logits=logits)
