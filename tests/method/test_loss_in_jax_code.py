"""`losses.danil_loss` in other people's JAX code.

Each case builds DANIL's loss the naive way, with two `jax.grad`s for A+ and
A- (Algorithm 1 literally, Eq. 2-6), and checks the loss and its parameter
gradient against `danil_loss` used as the README shows: with a plain
function, under `jax.vmap` over an ensemble axis, and inside `shard_map` on
2 devices. The README's Flax and Equinox examples are checked against the
same naive loss in test_readme_loss_examples.py. Needs JAX and optax only.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from danil_jax.method import losses

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
LAM, EPS = 0.5, 1e-4


def naive_danil(logits_fn, x, labels, lam=LAM, eps=EPS,
                reduction='per_image'):
  """L+c + lam * Ld with A+ and A- as two separate input gradients: of the
  summed cross-entropy ('per_image', one Ld per image) or of its batch mean
  ('batch', one Ld from the norm over the whole batch)."""
  logits = logits_fn(x)
  pred = jax.lax.stop_gradient(jnp.argmax(logits, -1))
  reduce = jnp.sum if reduction == 'per_image' else jnp.mean

  def reduced_ce(x_, y):
    return reduce(optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(x_), y))

  a_pos = jax.grad(reduced_ce)(x, labels)
  a_neg = jax.grad(reduced_ce)(x, pred)
  distance = jnp.sum(jnp.square(a_pos - a_neg), axis=tuple(range(1, x.ndim)))
  if reduction == 'per_image':
    ld = jnp.mean(jnp.where(pred != labels, 1.0 / (distance + eps), 0.0))
  else:
    ld = jnp.where(jnp.any(pred != labels),
                   1.0 / (jnp.sum(distance) + eps), 0.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce) + lam * ld


def _assert_close(got, want, rtol=1e-4):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(w))) or 1.0
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


def _half_misclassified(logits, num_classes):
  """Labels: the prediction for even samples, another class for odd ones."""
  pred = jnp.argmax(logits, -1)
  flip = jnp.arange(pred.shape[0]) % 2
  return (pred + flip) % num_classes


# ---------------------------------------------------------- a plain function


def _mlp(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return h @ params['w2']


def _mlp_params(key, features=12, hidden=16, classes=3):
  k1, k2 = jax.random.split(key)
  return dict(w1=jax.random.normal(k1, (features, hidden)) / 3,
              b1=jnp.zeros(hidden),
              w2=jax.random.normal(k2, (hidden, classes)))


@pytest.mark.parametrize('reduction', [None, 'per_image', 'batch'])
def test_plain_function(reduction):
  """None: the default reading, which is the trainer's, 'batch'."""
  params = _mlp_params(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2, 3))
  labels = _half_misclassified(_mlp(params, x), 3)
  given = {} if reduction is None else dict(reduction=reduction)

  def loss(p):
    return losses.danil_loss(lambda x_: _mlp(p, x_), x, labels, lam=LAM,
                             eps=EPS, **given)[0]

  value, grads = jax.value_and_grad(loss)(params)
  want, want_grads = jax.value_and_grad(
      lambda p: naive_danil(lambda x_: _mlp(p, x_), x, labels,
                            reduction=reduction or 'batch'))(params)
  _assert_close(value, want)
  _assert_close(grads, want_grads)


def test_under_vmap_over_an_ensemble_axis():
  """Three members' parameters stacked on axis 0, each with its own batch."""
  members = 3
  params = jax.vmap(_mlp_params)(jax.random.split(jax.random.PRNGKey(0),
                                                  members))
  x = jax.random.normal(jax.random.PRNGKey(1), (members, 6, 2, 2, 3))
  labels = jax.vmap(lambda p, x_: _half_misclassified(_mlp(p, x_), 3))(
      params, x)

  def member_loss(p, x_, y):
    return losses.danil_loss(lambda z: _mlp(p, z), x_, y, lam=LAM,
                             eps=EPS, reduction='per_image')[0]

  values, grads = jax.jit(jax.vmap(jax.value_and_grad(member_loss)))(
      params, x, labels)
  for m in range(members):
    member = lambda tree, m=m: jax.tree.map(lambda a: a[m], tree)
    want, want_grads = jax.value_and_grad(
        lambda p_, m=m: naive_danil(lambda z: _mlp(p_, z), x[m], labels[m]))(
            member(params))
    _assert_close(values[m], want)
    _assert_close(member(grads), want_grads)


# ------------------------------------------------------------- shard_map

_SHARD_MAP_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from danil_jax.method import losses
    from tests.method import test_loss_in_jax_code as t
    assert jax.device_count() == 2, jax.devices()
    shard_map = getattr(jax, 'shard_map', None)
    if shard_map is None:
      from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()), ('data',))
    params = t._mlp_params(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2, 3))
    labels = t._half_misclassified(t._mlp(params, x), 3)

    def local(p, x_, y):
      # Each device: DANIL on its half of the batch. The batch means of L+c
      # and Ld over equal halves average (pmean) to the global ones; the
      # gradient of that pmean w.r.t. the replicated p is the global one.
      def global_loss(q):
        value = losses.danil_loss(lambda z: t._mlp(q, z), x_, y, lam=t.LAM,
                                  eps=t.EPS, reduction='per_image')[0]
        return jax.lax.pmean(value, 'data')
      return jax.value_and_grad(global_loss)(p)

    sharded = jax.jit(shard_map(local, mesh=mesh,
                                in_specs=(P(), P('data'), P('data')),
                                out_specs=P()))
    value, grads = sharded(params, x, labels)
    want, want_grads = jax.value_and_grad(lambda p: t.naive_danil(
        lambda z: t._mlp(p, z), x, labels))(params)
    t._assert_close(value, want)
    t._assert_close(grads, want_grads)
    print('SHARD_MAP_OK')
''')


def test_inside_shard_map_on_two_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-c', _SHARD_MAP_SCRIPT],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert 'SHARD_MAP_OK' in result.stdout, result.stdout + result.stderr
