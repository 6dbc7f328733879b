"""danil_loss against an independent two-gradient reference (Algorithm 1)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from danil_jax.method import losses
from danil_jax.trainer import train_step


def init_params(key, channels=3, width=4, num_classes=3, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return dict(
      conv=jax.random.normal(k1, (3, 3, channels, width), dtype) * 0.5,
      scale=1.0 + 0.1 * jax.random.normal(k2, (width,), dtype),
      dense=jax.random.normal(k3, (width, num_classes), dtype),
  )


def small_conv_net(params, x):
  """A tiny conv net in plain JAX; the batch normalisation couples samples."""
  h = jax.lax.conv_general_dilated(
      x, params['conv'], (2, 2), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  mean = jnp.mean(h, axis=(0, 1, 2))
  var = jnp.var(h, axis=(0, 1, 2))
  h = (h - mean) / jnp.sqrt(var + 1e-5) * params['scale']
  h = jnp.tanh(h)
  return jnp.mean(h, axis=(1, 2)) @ params['dense']


def naive_danil(params, x, labels, lam, eps, net=small_conv_net):
  """Algorithm 1 literally: A+ and A- from two separate input gradients."""
  logits = net(params, x)
  pred = jax.lax.stop_gradient(jnp.argmax(logits, -1))

  def summed_ce(x_, y_):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        net(params, x_), y_))

  a_pos = jax.grad(summed_ce)(x, labels)
  a_neg = jax.grad(summed_ce)(x, pred)
  distance = jnp.sum((a_pos - a_neg) ** 2, axis=(1, 2, 3))
  ld_per_sample = jnp.where(pred != labels, 1.0 / (distance + eps), 0.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce) + lam * jnp.mean(ld_per_sample), jnp.mean(ld_per_sample)


def naive_danil_batch(params, x, labels, lam, eps, net=small_conv_net):
  """The batched PyTorch port in JAX: maps of the *mean* losses, one norm."""
  logits = net(params, x)
  pred = jax.lax.stop_gradient(jnp.argmax(logits, -1))

  def mean_ce(x_, y_):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        net(params, x_), y_))

  a_pos = jax.grad(mean_ce)(x, labels)
  a_neg = jax.grad(mean_ce)(x, pred)
  ld = jnp.where(jnp.any(pred != labels),
                 1.0 / (jnp.sum((a_pos - a_neg) ** 2) + eps), 0.0)
  return mean_ce(x, labels) + lam * ld, ld


NAIVE = dict(per_image=naive_danil, batch=naive_danil_batch)


def fast_danil(params, x, labels, lam, eps, reduction='per_image'):
  loss, aux = losses.danil_loss(
      lambda x_: small_conv_net(params, x_), x, labels, lam=lam, eps=eps,
      reduction=reduction)
  return loss, aux['distraction']


@pytest.fixture
def batch():
  key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(key_x, (6, 8, 8, 3))
  labels = jax.random.randint(key_y, (6,), 0, 3)
  return init_params(key_p), x, labels


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
@pytest.mark.parametrize('lam', [1e-5, 1.0])
def test_equals_two_gradient_reference(batch, lam, reduction):
  params, x, labels = batch
  eps = 1e-4
  (loss_ref, ld_ref), grads_ref = jax.value_and_grad(
      NAIVE[reduction], has_aux=True)(params, x, labels, lam, eps)
  (loss, ld), grads = jax.jit(jax.value_and_grad(fast_danil, has_aux=True),
                              static_argnums=(3, 4, 5))(params, x, labels, lam,
                                                        eps, reduction)
  # The reference must see misclassified samples, or Ld would be trivially 0.
  pred = jnp.argmax(small_conv_net(params, x), -1)
  assert 0 < int(jnp.sum(pred != labels)) < len(labels)
  assert float(ld_ref) > 0
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-5)
  for name in params:
    np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(
                                   grads_ref[name]))), err_msg=name)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_distraction_term_changes_gradient(batch, reduction):
  # Guards the test above: with lam=1 the Ld term must move the gradient, so
  # an implementation that dropped it would fail there.
  params, x, labels = batch
  g_danil = jax.grad(lambda p: fast_danil(p, x, labels, 1.0, 1e-4,
                                          reduction)[0])(params)
  g_ce = jax.grad(lambda p: losses.cross_entropy_loss(
      small_conv_net(p, x), labels))(params)
  diff = max(float(jnp.max(jnp.abs(g_danil[k] - g_ce[k]))) for k in params)
  assert diff > 1e-3


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_correct_batch_has_zero_distraction_and_plain_ce_gradient(
    batch, reduction):
  params, x, _ = batch
  labels = jnp.argmax(small_conv_net(params, x), -1)
  (loss, ld), grads = jax.value_and_grad(fast_danil, has_aux=True)(
      params, x, labels, 1.0, 1e-4, reduction)
  ce_loss, ce_grads = jax.value_and_grad(
      lambda p: losses.cross_entropy_loss(small_conv_net(p, x), labels))(params)
  assert float(ld) == 0.0
  np.testing.assert_allclose(loss, ce_loss, rtol=1e-6)
  for name in params:
    np.testing.assert_allclose(grads[name], ce_grads[name], rtol=1e-6,
                               atol=1e-8)


def test_batch_reading_scales_as_the_derivation_says(batch):
  """The docstring's relation between the readings, on the same batch:
  batch maps are 1/B of the per-image ones, D = sum_i d_i / B^2."""
  params, x, labels = batch
  fn = lambda x_: small_conv_net(params, x_)
  _, per_image = losses.danil_loss(fn, x, labels, reduction='per_image')
  _, batched = losses.danil_loss(fn, x, labels, reduction='batch')
  b = x.shape[0]
  np.testing.assert_allclose(batched['distance'],
                             per_image['distance'] / b**2, rtol=1e-5)
  np.testing.assert_allclose(
      batched['distraction'],
      1.0 / (float(np.sum(per_image['distance'])) / b**2 + 1e-4), rtol=1e-5)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_distraction_gradient_matches_finite_differences(reduction):
  with jax.enable_x64(True):
    key_x, key_p = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(key_x, (4, 6, 6, 2), jnp.float64)
    params = init_params(key_p, channels=2, width=3, num_classes=3,
                         dtype=jnp.float64)
    logits = small_conv_net(params, x)
    # Every sample misclassified: labels differ from the prediction.
    labels = (jnp.argmax(logits, -1) + 1) % 3

    def distraction(p):
      _, aux = losses.danil_loss(lambda x_: small_conv_net(p, x_), x, labels,
                                 eps=1e-4, reduction=reduction)
      return aux['distraction']

    assert float(distraction(params)) > 0
    check_grads(distraction, (params,), order=1, modes=['rev'], eps=1e-6,
                atol=1e-5, rtol=1e-5)


def test_has_aux_returns_model_aux_from_the_single_forward(batch):
  params, x, labels = batch

  def logits_fn(x_):
    logits = small_conv_net(params, x_)
    return logits, {'mean_logit': jnp.mean(logits)}

  loss, aux = losses.danil_loss(logits_fn, x, labels, has_aux=True,
                                reduction='per_image')
  loss_plain, aux_plain = losses.danil_loss(
      lambda x_: small_conv_net(params, x_), x, labels,
      reduction='per_image')
  np.testing.assert_allclose(loss, loss_plain, rtol=1e-6)
  np.testing.assert_allclose(aux['model_aux']['mean_logit'],
                             jnp.mean(aux_plain['logits']), rtol=1e-6)
  assert aux['misclassified'].shape == (6,)
  assert aux['distance'].shape == (6,)


def test_danil_rejects_bad_shapes(batch):
  params, x, labels = batch
  with pytest.raises(ValueError, match='labels'):
    losses.danil_loss(lambda x_: small_conv_net(params, x_), x, labels[:3])
  with pytest.raises(ValueError, match="'mean'"):
    losses.danil_loss(lambda x_: small_conv_net(params, x_), x, labels,
                      reduction='mean')


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=5)
  log_probs = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  expected = -np.mean(log_probs[np.arange(5), labels])
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels),
                             expected, rtol=1e-6)


@pytest.mark.parametrize('keep_ratio,kept', [(0.5, 4), (0.3, 3), (1.0, 7)])
def test_ohem_keeps_the_hardest_samples(keep_ratio, kept):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(7, 3)).astype(np.float32) * 3
  labels = rng.integers(0, 3, size=7)
  log_probs = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  ce = -log_probs[np.arange(7), labels]
  hardest = np.argsort(-ce)[:kept]
  np.testing.assert_allclose(losses.ohem_loss(logits, labels, keep_ratio),
                             np.mean(ce[hardest]), rtol=1e-6)
  # Only the kept samples receive gradient.
  grad = jax.grad(losses.ohem_loss)(jnp.asarray(logits), labels, keep_ratio)
  has_grad = np.any(np.abs(np.asarray(grad)) > 0, axis=-1)
  assert set(np.flatnonzero(has_grad)) == set(hardest)


def test_ohem_rejects_bad_ratio():
  with pytest.raises(ValueError, match='keep_ratio'):
    losses.ohem_loss(jnp.zeros((2, 2)), jnp.zeros((2,), jnp.int32), 0.0)


class _BatchNormNet(nn.Module):
  """Conv, train-mode BatchNorm (couples the samples) and a dense head."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(jnp.mean(jnp.tanh(x), axis=(1, 2)))


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_gradient_share_from_two_separate_parameter_gradients(batch,
                                                              reduction):
  """train_step.gradient_share against g_ce and g_d each computed
  alone, g_d by the naive two-input-gradient reference of that reading."""
  _, x, _ = batch
  model = _BatchNormNet()
  variables = model.init(jax.random.PRNGKey(3), x, train=False)
  state = train_step.create_train_state(model, variables, optax.sgd(0.1),
                                   jax.random.PRNGKey(4))

  def net(params, x_):
    logits, _ = model.apply({'params': params,
                             'batch_stats': variables['batch_stats']}, x_,
                            train=True, mutable=['batch_stats'])
    return logits

  pred = jnp.argmax(net(state.params, x), -1)
  labels = (pred + jnp.arange(6) % 2) % 3  # three misclassified
  lam, eps = 1e-3, 1e-4
  g_ce = jax.grad(lambda p: losses.cross_entropy_loss(net(p, x), labels))(
      state.params)
  g_d = jax.grad(lambda p: lam * NAIVE[reduction](p, x, labels, lam, eps,
                                                  net=net)[1])(state.params)
  norm_d = float(optax.tree.norm(g_d))
  want_share = norm_d / float(optax.tree.norm(jax.tree.map(jnp.add, g_ce,
                                                           g_d)))
  want_ratio = norm_d / float(optax.tree.norm(g_ce))
  assert want_ratio > 1e-3  # the term is there to be measured
  got = train_step.gradient_share(
      state, dict(image=x, label=labels.astype(jnp.int32)), lam=lam, eps=eps,
      reduction=reduction, misclassified_only=False, map_dtype='compute')
  np.testing.assert_allclose(got['distraction_grad_share'], want_share,
                             rtol=1e-4)
  np.testing.assert_allclose(got['distraction_grad_ratio'], want_ratio,
                             rtol=1e-4)


@pytest.mark.parametrize('skip_correct', [False, True])
@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_train_step_takes_the_reading(batch, reduction, skip_correct):
  """train_step.make_train_step (and its skip_correct path) with `reduction` moves the
  parameters by the naive reference's gradient of that reading."""
  _, x, _ = batch
  model = _BatchNormNet()
  variables = model.init(jax.random.PRNGKey(3), x, train=False)
  state = train_step.create_train_state(model, variables, optax.sgd(0.1),
                                   jax.random.PRNGKey(4))

  def net(params, x_):
    logits, _ = model.apply({'params': params,
                             'batch_stats': variables['batch_stats']}, x_,
                            train=True, mutable=['batch_stats'])
    return logits

  labels = (jnp.argmax(net(state.params, x), -1) + jnp.arange(6) % 2) % 3
  lam, eps = 1e-2, 1e-4
  (loss_ref, ld_ref), grads_ref = jax.value_and_grad(
      NAIVE[reduction], has_aux=True)(state.params, x, labels, lam, eps,
                                      net=net)
  new_state, metrics = train_step.step_for(
      'danil', lam=lam, eps=eps, reduction=reduction,
      skip_correct=skip_correct)(
          state, dict(image=x, label=labels.astype(jnp.int32)))
  np.testing.assert_allclose(metrics['loss'], loss_ref, rtol=1e-5)
  np.testing.assert_allclose(metrics['distraction'], ld_ref, rtol=1e-5)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads_ref)
  for got_leaf, want_leaf in zip(jax.tree.leaves(new_state.params),
                                 jax.tree.leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)
