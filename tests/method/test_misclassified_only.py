"""danil_jax.method.misclassified_only against a naive per-image reference.

The reference takes, for every image alone, A+ and A- as two separate
`jax.grad`s of the cross-entropy through the model with fixed (running)
BatchNorm statistics (Eq. 2-4, Algorithm 1 literally), in float64, then
Ld by the reading's formula (Eq. 5; losses.py's module docstring).
"""

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from danil_jax.configs import demo
from danil_jax.method import misclassified_only
from danil_jax.trainer import config_checks
from danil_jax.runtime import run_config
from danil_jax.trainer import train_step
from danil_jax.trainer import train

EPS = 1e-4
CLASSES = 3


class _Net(nn.Module):
  """conv -> BatchNorm -> ReLU -> strided conv -> mean -> dense.

  `dtype` is the compute dtype as in danil_jax.models (None: the inputs').
  """
  dtype: Any = None

  @nn.compact
  def __call__(self, x, *, train):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(5, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    return nn.Dense(CLASSES, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))


def _setup(batch=16):
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


def _naive_ld(logits_fn, params, x, labels, pred, reduction):
  """Ld of `reduction` from two separate input gradients per image."""
  batch = x.shape[0]

  def ce(z, y):
    logits = logits_fn(params, z[None])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.reshape(y, (1,)))[0]

  def distance(image_label_pred):  # one image at a time (a loop, not vmap)
    image, label, guess = image_label_pred
    a_pos = jax.grad(ce)(image, label)  # A+ = dL+c/dx      (Eq. 2, 3)
    a_neg = jax.grad(ce)(image, guess)  # A- = dL-c/dx, y- = pred (Eq. 4)
    return jnp.sum(jnp.square(a_pos - a_neg))

  distances = jax.lax.map(distance, (x, labels, pred))
  misclassified = pred != labels
  if reduction == 'per_image':  # mean over images of Algorithm 1's Ld
    return jnp.sum(jnp.where(misclassified, 1.0 / (distances + EPS),
                             0.0)) / batch
  # The maps of the batch-mean cross-entropy are 1/B of these: the squared
  # norm of the whole [B, ...] tensor is sum_i d_i / B^2, correct images
  # included.
  total = jnp.sum(distances) / batch**2
  return jnp.where(jnp.any(misclassified), 1.0 / (total + EPS), 0.0)


def _labels_with(pred, count):
  """Labels making `count` images misclassified: the first and the last
  image first (a padded bucket slot repeats one of them in any sensible
  gather, so forgetting a mask counts it twice), then a fixed permutation."""
  batch = pred.shape[0]
  rest = np.random.default_rng(count).permutation(np.arange(1, batch - 1))
  order = np.concatenate([[0, batch - 1], rest])
  flip = np.zeros(batch, np.int32)
  flip[order[:count]] = 1
  return (pred + jnp.asarray(flip)) % CLASSES


def test_capacities():
  assert misclassified_only.capacities(16) == [2, 4, 8, 16]
  assert misclassified_only.capacities(8) == [1, 2, 4, 8]
  assert misclassified_only.capacities(12) == [2, 3, 6, 12]
  assert misclassified_only.capacities(2) == [1, 2]


# B = 16 (capacities 2, 4, 8, 16): none, 1, exactly B/8, B/8+1, B/4+1,
# B/2+1 and B misclassified -> (count, bucket that must run).
BOUNDARIES = [(0, 0), (1, 2), (2, 2), (3, 4), (5, 8), (9, 16), (16, 16)]


def _assert_tree_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5,
                               atol=1e-12 + 1e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize('reduction', ['per_image', 'batch'])
def test_distraction_matches_naive_reference(reduction):
  with jax.enable_x64(True):
    model, variables, x = _setup()
    logits_fn = _logits_fn(model, variables)
    params = variables['params']
    pred = jnp.argmax(logits_fn(params, x), -1)
    # One executable for every count: the bucket is chosen at run time.
    distraction = jax.jit(
        lambda p, y: misclassified_only.distraction_value_and_grad(
            logits_fn, p, x, y, pred, eps=EPS, reduction=reduction))
    naive = jax.jit(jax.value_and_grad(
        lambda p, y: _naive_ld(logits_fn, p, x, y, pred, reduction)))
    for count, bucket in BOUNDARIES:
      labels = _labels_with(pred, count)
      ld, grads, used = distraction(params, labels)
      want, want_grads = naive(params, labels)
      assert int(used) == bucket, (count, int(used))
      np.testing.assert_allclose(ld, want, rtol=1e-5, atol=0)
      _assert_tree_close(grads, want_grads)
      assert (float(want) > 0) == (count > 0)


def _train_mode_reference(model, variables, x, labels, lam, reduction):
  """(L+c and its gradient, lam * Ld's gradient): the train-mode
  cross-entropy with the batch's statistics, Ld naive with the running ones,
  y- the train-mode prediction."""
  logits_fn = _logits_fn(model, variables)

  def train_logits(p):
    return model.apply({'params': p, 'batch_stats': variables[
        'batch_stats']}, x, train=True, mutable=['batch_stats'])[0]

  pred = jnp.argmax(train_logits(variables['params']), -1)

  def ce(p):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        train_logits(p), labels))

  def scaled_ld(p):
    return lam * _naive_ld(logits_fn, p, x, labels, pred, reduction)

  params = variables['params']
  return (jax.jit(jax.value_and_grad(ce))(params),
          jax.jit(jax.value_and_grad(scaled_ld))(params), pred)


@pytest.mark.parametrize('reduction', ['per_image', 'batch'])
def test_train_step_gradient_is_ce_plus_lam_ld(reduction):
  """The step's gradient: train-mode L+c (batch statistics, updated) plus
  lam * the reading's Ld with the running statistics."""
  lam = 0.5
  with jax.enable_x64(True):
    model, variables, x = _setup()
    logits_fn = _logits_fn(model, variables)
    pred_eval = jnp.argmax(logits_fn(variables['params'], x), -1)
    labels = _labels_with(pred_eval, 3)
    state = train_step.create_train_state(
        model, variables, optax.sgd(1.0), jax.random.PRNGKey(2))
    batch = {'image': x, 'label': labels}
    new_state, metrics = jax.jit(train_step.step_for(
        'danil', lam=lam, eps=EPS, misclassified_only=True,
        reduction=reduction))(state, batch)
    (ce, ce_grads), (scaled_ld, ld_grads), pred = _train_mode_reference(
        model, variables, x, labels, lam, reduction)
    want_grads = jax.tree.map(jnp.add, ce_grads, ld_grads)
    # SGD with lr 1: params - new params is the gradient.
    grads = jax.tree.map(jnp.subtract, variables['params'], new_state.params)
    _assert_tree_close(grads, want_grads)
    np.testing.assert_allclose(metrics['loss'], ce + scaled_ld, rtol=1e-6)
    count = int(jnp.sum(pred != labels))
    capacity = next(c for c in (0, 2, 4, 8, 16) if c >= count)
    assert int(metrics['bucket']) == capacity
    assert {k: float(v) for k, v in metrics.items() if k.startswith(
        'bucket_')} == {f'bucket_{c}': float(c == capacity)
                        for c in (0, 2, 4, 8, 16)}
    # BatchNorm statistics updated from the train-mode forward.
    assert not np.allclose(new_state.batch_stats['BatchNorm_0']['mean'],
                           variables['batch_stats']['BatchNorm_0']['mean'])

    # The logged gradient share measures this loss, not the exact one.
    share = jax.jit(lambda s, b: train_step.gradient_share(
        s, b, lam=lam, eps=EPS, reduction=reduction,
        misclassified_only=True, map_dtype='compute'))(state, batch)
    norm = lambda tree: np.sqrt(sum(float(jnp.sum(jnp.square(a)))
                                    for a in jax.tree.leaves(tree)))
    np.testing.assert_allclose(share['distraction_grad_ratio'],
                               norm(ld_grads) / norm(ce_grads), rtol=1e-6)
    np.testing.assert_allclose(share['distraction_grad_share'],
                               norm(ld_grads) / norm(want_grads), rtol=1e-6)


@pytest.mark.parametrize('reduction', ['per_image', 'batch'])
def test_float32_maps_of_a_bfloat16_model(reduction):
  """map_dtype='float32': a bf16 model's Ld and its parameter gradient are
  the float32 model's (naive reference); with 'compute' they are not."""
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 6, 6, 2), jnp.float32)
  variables = _Net().init(jax.random.PRNGKey(1), x, train=False)
  stats = variables['batch_stats']['BatchNorm_0']
  variables = dict(variables, batch_stats={'BatchNorm_0': dict(
      mean=stats['mean'] + 0.3, var=stats['var'] * 1.7)})
  params = variables['params']
  reference_fn = _logits_fn(_Net(dtype=jnp.float32), variables)
  pred_eval = jnp.argmax(reference_fn(params, x), -1)
  labels = _labels_with(pred_eval, 5)
  state = train_step.create_train_state(_Net(dtype=jnp.bfloat16), variables,
                                   optax.sgd(1.0), jax.random.PRNGKey(2))
  batch = {'image': x, 'label': labels}
  # y- of the step: the bf16 model's train-mode prediction.
  pred = jnp.argmax(state.apply_fn(variables, x, train=True,
                                   mutable=['batch_stats'])[0], -1)
  want, want_grads = jax.jit(jax.value_and_grad(
      lambda p: _naive_ld(reference_fn, p, x, labels, pred, reduction)))(
          params)

  def errors(map_dtype):
    """Relative errors of Ld and dLd/dparams from the step's map forward."""
    maps_fn = train_step._eval_logits_fn(state, map_dtype)
    ld, grads, _ = jax.jit(
        lambda p: misclassified_only.distraction_value_and_grad(
            maps_fn, p, x, labels, pred, eps=EPS, reduction=reduction))(params)
    # Relative to the largest entry of all leaves (some leaves of dLd, e.g.
    # the head's bias, are exactly zero).
    scale = max(float(jnp.max(jnp.abs(w)))
                for w in jax.tree.leaves(want_grads))
    grad_error = max(float(jnp.max(jnp.abs(g - w))) / scale
                     for g, w in zip(jax.tree.leaves(grads),
                                     jax.tree.leaves(want_grads), strict=True))
    return abs(float(ld) / float(want) - 1), grad_error

  float32_errors, compute_errors = errors('float32'), errors('compute')
  print(reduction, 'float32', float32_errors, 'compute', compute_errors)
  assert max(float32_errors) < 1e-5, float32_errors
  # The bf16 maps are 10x further off at least: the check above can fail.
  assert min(compute_errors) > 1e-4, compute_errors
  if reduction == 'batch':  # the step passes map_dtype on (once: compiles)
    _, metrics = jax.jit(train_step.step_for(
        'danil', lam=1.0, eps=EPS, reduction=reduction,
        misclassified_only=True, map_dtype='float32'))(state, batch)
    np.testing.assert_allclose(metrics['distraction'], want, rtol=1e-5)


# ------------------------------------------------------------ in the trainer


def _demo_config(data_dir, **danil):
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.max_steps = 3
  config.log_every_steps = 1
  config.input.global_batch_size = 16
  config.input.eval_batch_size = 200
  config.danil.update(danil)
  return config


def test_config_checks_name_the_danil_keys():
  config = _demo_config('unused', misclassified_only=False,
                        map_dtype='float32')
  with pytest.raises(config_checks.ConfigError,
                     match=r'config\.danil\.map_dtype .*'
                           r'config\.danil\.misclassified_only=True'):
    config_checks.check(config)
  config.danil.misclassified_only = True
  config_checks.check(config)  # float32 maps in the mode: fine
  config.danil.skip_correct = True
  config_checks.check(config)  # redundant in the mode, not an error
  for key, bad in (('map_dtype', 'bf16'), ('reduction', 'mean')):
    bad_config = _demo_config('unused', **{key: bad})
    with pytest.raises(config_checks.ConfigError,
                       match=rf'config\.danil\.{key} must be one of'):
      config_checks.check(bad_config)
  # Loaded from JSON, ConfigDict's own type check does not apply.
  config = ml_collections.ConfigDict(_demo_config('unused').to_dict())
  config.danil = ml_collections.ConfigDict(dict(config.danil.to_dict(),
                                                misclassified_only='yes'))
  with pytest.raises(config_checks.ConfigError,
                     match=r'config\.danil\.misclassified_only must be True '
                           r'or False'):
    config_checks.check(config)


def test_mode_changes_the_pinned_result():
  old = _demo_config('unused').to_dict()
  new = _demo_config('unused', misclassified_only=True).to_dict()
  changing, observing, _ = run_config.differences(old, new)
  assert [key for key, _, _ in changing] == ['danil.misclassified_only']
  assert not observing


def test_demo_run_in_the_mode_logs_buckets(tmp_path):
  """3 steps of the demo with misclassified_only: trains, logs `bucket`
  and how often each capacity of B = 16 ran, and evaluates."""
  config = _demo_config(str(tmp_path / 'data'), misclassified_only=True)
  report = train.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  train_lines = [r for r in lines if r['kind'] == 'train']
  assert [r['step'] for r in train_lines] == [1, 2, 3]
  for record in train_lines:
    shares = [record[f'bucket_{c}'] for c in (0, 2, 4, 8, 16)]
    assert sorted(shares) == [0, 0, 0, 0, 1]  # one step a line
    ran = (0, 2, 4, 8, 16)[shares.index(1)]
    assert record['bucket'] == ran
    assert ran >= round(record['misclassified'] * 16)
    assert (record['distraction'] > 0) == (ran > 0)
    assert (record['distraction_grad_share'] > 0) == (ran > 0)
  assert sum(map(sum, report['confusion_matrix'])) == 800
