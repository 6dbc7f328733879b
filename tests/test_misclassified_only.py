"""danil_jax.misclassified_only against a naive per-image reference.

The reference takes, for every misclassified image alone, A+ and A- as two
separate `jax.grad`s of the cross-entropy through the model with fixed
(running) BatchNorm statistics (Eq. 2-5), in float64.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from danil_jax import misclassified_only
from danil_jax import steps

EPS = 1e-4
CLASSES = 3


class _Net(nn.Module):
  """conv -> BatchNorm -> ReLU -> strided conv -> mean -> dense."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.relu(nn.Conv(5, (3, 3), strides=(2, 2))(x))
    return nn.Dense(CLASSES)(jnp.mean(x, axis=(1, 2)))


def _setup(batch=8):
  model = _Net()
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, 6, 6, 2), jnp.float64)
  variables = model.init(jax.random.PRNGKey(1), x, train=False)
  variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
  # Running statistics other than (0, 1), so "fixed statistics" matters.
  stats = variables['batch_stats']['BatchNorm_0']
  stats = dict(mean=stats['mean'] + 0.3, var=stats['var'] * 1.7)
  variables = dict(variables, batch_stats={'BatchNorm_0': stats})
  return model, variables, x


def _logits_fn(model, variables):
  return lambda p, x: model.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, train=False)


def _naive_ld(logits_fn, params, x, labels, pred):
  """(1/B) sum over misclassified images of 1/(||A+ - A-||^2 + eps)."""
  total = 0.0
  for i in range(x.shape[0]):
    if int(pred[i]) == int(labels[i]):
      continue

    def ce(z, y):
      logits = logits_fn(params, z[None])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.asarray([y]))[0]

    a_pos = jax.grad(ce)(x[i], labels[i])
    a_neg = jax.grad(ce)(x[i], pred[i])
    total = total + 1.0 / (jnp.sum(jnp.square(a_pos - a_neg)) + EPS)
  return total / x.shape[0]


def _labels_with(pred, count):
  """Labels making the first `count` images (of a fixed permutation)
  misclassified."""
  order = np.random.default_rng(count).permutation(pred.shape[0])
  flip = np.zeros(pred.shape[0], np.int32)
  flip[order[:count]] = 1
  return (pred + jnp.asarray(flip)) % CLASSES


def test_capacities():
  assert misclassified_only.capacities(8) == [1, 2, 4, 8]
  assert misclassified_only.capacities(12) == [2, 3, 6, 12]
  assert misclassified_only.capacities(2) == [1, 2]


# Counts at and just past every bucket boundary of B = 8 (capacities 1, 2,
# 4, 8), and none: (misclassified count, bucket that must run).
BOUNDARIES = [(0, 0), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8)]


def test_distraction_matches_naive_per_image_reference():
  with jax.enable_x64(True):
    model, variables, x = _setup()
    logits_fn = _logits_fn(model, variables)
    params = variables['params']
    pred = jnp.argmax(logits_fn(params, x), -1)
    # One executable for every count: the bucket is chosen at run time.
    distraction = jax.jit(
        lambda p, y: misclassified_only.distraction_value_and_grad(
            logits_fn, p, x, y, pred, eps=EPS))
    for count, bucket in BOUNDARIES:
      labels = _labels_with(pred, count)
      ld, grads, used = distraction(params, labels)
      want, want_grads = jax.value_and_grad(
          lambda p, y=labels: _naive_ld(logits_fn, p, x, y, pred))(params)
      assert int(used) == bucket, (count, int(used))
      np.testing.assert_allclose(ld, want, rtol=1e-5, atol=0)
      for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5,
                                   atol=1e-12 + 1e-5 * float(np.abs(w).max()))
      assert (float(want) > 0) == (count > 0)


def test_train_step_gradient_is_ce_plus_lam_ld():
  """The step's gradient: train-mode L+c (batch statistics, updated) plus
  lam * the per-image Ld with the running statistics."""
  lam = 0.5
  with jax.enable_x64(True):
    model, variables, x = _setup()
    logits_fn = _logits_fn(model, variables)
    pred_eval = jnp.argmax(logits_fn(variables['params'], x), -1)
    labels = _labels_with(pred_eval, 3)
    state = steps.create_train_state(
        model, variables, optax.sgd(1.0), jax.random.PRNGKey(2))
    batch = {'image': x, 'label': labels}
    new_state, metrics = jax.jit(lambda s, b: steps.train_step(
        s, b, method='danil', lam=lam, eps=EPS, misclassified_only=True))(
            state, batch)

    def train_logits(p):
      return model.apply({'params': p, 'batch_stats': variables[
          'batch_stats']}, x, train=True, mutable=['batch_stats'])[0]

    pred = jnp.argmax(train_logits(variables['params']), -1)  # y-: train mode

    def naive_loss(p):
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          train_logits(p), labels))
      return ce + lam * _naive_ld(logits_fn, p, x, labels, pred)

    want_grads = jax.grad(naive_loss)(variables['params'])
    # SGD with lr 1: params - new params is the gradient.
    grads = jax.tree.map(jnp.subtract, variables['params'], new_state.params)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=1e-5,
                                 atol=1e-12 + 1e-5 * float(np.abs(w).max()))
    np.testing.assert_allclose(metrics['loss'], naive_loss(variables['params']),
                               rtol=1e-6)
    assert int(metrics['bucket']) >= int(jnp.sum(pred != labels))
    # BatchNorm statistics updated from the train-mode forward.
    assert not np.allclose(new_state.batch_stats['BatchNorm_0']['mean'],
                           variables['batch_stats']['BatchNorm_0']['mean'])
