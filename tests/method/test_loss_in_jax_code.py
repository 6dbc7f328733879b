"""`losses.danil_loss` in other people's JAX code (issue 14, item 5).

Each case builds DANIL's loss the naive way, with two `jax.grad`s for A+ and
A- (Algorithm 1 literally, Eq. 2-6), and checks the loss and its parameter
gradient against `danil_loss` used as the README shows: with a `flax.nnx`
model with BatchNorm (its state updates returned), with a plain function,
under `jax.vmap` over an ensemble axis, and inside `shard_map` on 2 devices.
"""

import os
import subprocess
import sys
import textwrap

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from danil_jax.method import losses

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))
LAM, EPS = 0.5, 1e-4


def naive_danil(logits_fn, x, labels, lam=LAM, eps=EPS):
  """L+c + lam * Ld with A+ and A- as two separate input gradients."""
  logits = logits_fn(x)
  pred = jax.lax.stop_gradient(jnp.argmax(logits, -1))

  def summed_ce(x_, y):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(x_), y))

  a_pos = jax.grad(summed_ce)(x, labels)
  a_neg = jax.grad(summed_ce)(x, pred)
  distance = jnp.sum(jnp.square(a_pos - a_neg), axis=tuple(range(1, x.ndim)))
  ld = jnp.mean(jnp.where(pred != labels, 1.0 / (distance + eps), 0.0))
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


def test_plain_function():
  params = _mlp_params(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2, 3))
  labels = _half_misclassified(_mlp(params, x), 3)

  def loss(p):
    return losses.danil_loss(lambda x_: _mlp(p, x_), x, labels, lam=LAM,
                             eps=EPS)[0]

  value, grads = jax.value_and_grad(loss)(params)
  want, want_grads = jax.value_and_grad(
      lambda p: naive_danil(lambda x_: _mlp(p, x_), x, labels))(params)
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
                             eps=EPS)[0]

  values, grads = jax.jit(jax.vmap(jax.value_and_grad(member_loss)))(
      params, x, labels)
  for m in range(members):
    member = lambda tree, m=m: jax.tree.map(lambda a: a[m], tree)
    want, want_grads = jax.value_and_grad(
        lambda p_, m=m: naive_danil(lambda z: _mlp(p_, z), x[m], labels[m]))(
            member(params))
    _assert_close(values[m], want)
    _assert_close(member(grads), want_grads)


# ------------------------------------------------- a flax.nnx model with BN


class _NnxNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, classes: int = 3):
    # No bias: BatchNorm follows (its gradient would be 0 up to rounding).
    self.conv = nnx.Conv(3, 6, (3, 3), strides=(2, 2), use_bias=False,
                         rngs=rngs)
    self.bn = nnx.BatchNorm(6, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(6, classes, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn(self.conv(x)))
    return self.head(jnp.mean(y, axis=(1, 2)))


def test_flax_nnx_model_with_batch_norm():
  """Train mode: the loss's forward updates the BatchNorm statistics, which
  come back through `has_aux`; gradient as the naive two-gradient loss."""
  model = _NnxNet(nnx.Rngs(0))
  model.train()
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 3))

  def forward(p, x_):
    # copy=True: fresh Variables at the trace level of danil_loss's VJP, so
    # BatchNorm may update them there (nnx raises TraceContextError else).
    net = nnx.merge(graphdef, p, stats, copy=True)
    logits = net(x_)
    return logits, nnx.state(net, nnx.BatchStat)  # the updated statistics

  labels = _half_misclassified(forward(params, x)[0], 3)

  @jax.jit
  def step(p):
    def loss(p_):
      value, aux = losses.danil_loss(lambda x_: forward(p_, x_), x, labels,
                                     lam=LAM, eps=EPS, has_aux=True)
      return value, aux['model_aux']
    return jax.value_and_grad(loss, has_aux=True)(p)

  (value, new_stats), grads = step(params)
  want, want_grads = jax.value_and_grad(
      lambda p: naive_danil(lambda x_: forward(p, x_)[0], x, labels))(params)
  _assert_close(value, want)
  _assert_close(grads, want_grads)
  # The statistics of the one forward: those of a plain train-mode call.
  _, want_stats = forward(params, x)
  _assert_close(new_stats, want_stats, rtol=1e-6)
  assert not np.allclose(new_stats['bn']['mean'][...],
                         stats['bn']['mean'][...])
  nnx.update(model, new_stats)  # how the caller keeps them


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
                                  eps=t.EPS)[0]
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
