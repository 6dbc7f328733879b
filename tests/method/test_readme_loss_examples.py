"""The documentation's four ways to call the loss, run as written.

Each example (docs/loss.md, the first repeated in the README: a plain
function, Flax Linen with BatchNorm, Flax NNX with BatchNorm and Dropout,
Equinox) is executed with `lam` raised from the paper's 1e-5 to 0.5, so
that a wrong Ld gradient is not hidden below the tolerance, and its loss and gradient are checked
against Algorithm 1 written with two `jax.grad`s in the default reading,
'batch'. The model's state after the Flax examples must be that of one
plain train-mode call. Flax and Equinox tests skip where those are not
installed.
"""

import jax
import numpy as np
import pytest

from tests.method import readme_examples
from tests.method.test_loss_in_jax_code import _assert_close
from tests.method.test_loss_in_jax_code import naive_danil

LAM = 0.5


def _run(name: str) -> dict:
  code = readme_examples.loss_examples()[name]
  assert 'lam=1e-5' in code, name
  namespace = {}
  exec(compile(code.replace('lam=1e-5', f'lam={LAM}'),  # pylint: disable=exec-used
               f'docs/loss.md ({name})', 'exec'), namespace)
  if 'aux' in namespace:  # the Linen example returns the statistics instead
    assert float(namespace['aux']['distraction']) > 0, 'Ld inactive'
  return namespace


def _naive(logits_fn, ns):
  return naive_danil(logits_fn, ns['x'], ns['y'], lam=LAM, reduction='batch')


def test_the_readme_shows_the_guides_plain_example():
  assert readme_examples.readme_example() == (
      readme_examples.loss_examples()['plain'])


def test_plain_function():
  ns = _run('plain')
  want, want_grads = jax.value_and_grad(
      lambda p: _naive(lambda xb: ns['logits_fn'](p, xb), ns))(ns['params'])
  _assert_close(ns['loss'], want)
  _assert_close(ns['grads'], want_grads)


def test_flax_linen_with_batch_norm():
  pytest.importorskip('flax')
  ns = _run('linen')
  model, variables = ns['model'], ns['variables']

  def forward(params, xb):
    return model.apply({'params': params,
                        'batch_stats': variables['batch_stats']}, xb,
                       train=True, mutable=['batch_stats'])

  want, want_grads = jax.value_and_grad(
      lambda p: _naive(lambda xb: forward(p, xb)[0], ns))(variables['params'])
  _assert_close(ns['loss'], want)
  _assert_close(ns['grads'], want_grads)
  # The statistics of the loss's one forward: a plain train-mode call's.
  _, want_stats = forward(variables['params'], ns['x'])
  _assert_close(ns['batch_stats'], want_stats['batch_stats'], rtol=1e-6)


def test_flax_nnx_with_batch_norm_and_dropout():
  nnx = pytest.importorskip('flax.nnx')
  ns = _run('nnx')
  # The example's model before its call: the same class and seed.
  fresh = ns['Net'](nnx.Rngs(0))
  graphdef, params, rest = nnx.split(fresh, nnx.Param, ...)

  def forward(p, xb):  # the same Dropout mask on every call: same RNG state
    return nnx.merge(graphdef, p, rest, copy=True)(xb)

  want, want_grads = jax.value_and_grad(
      lambda p: _naive(lambda xb: forward(p, xb), ns))(params)
  _assert_close(ns['loss'], want)
  _assert_close(jax.tree.leaves(ns['grads']), jax.tree.leaves(want_grads))
  # BatchNorm's statistics and the RNG count as after one call of the model.
  start_mean = np.array(fresh.bn.mean[...])
  fresh(ns['x'])
  kept = (nnx.BatchStat, nnx.RngCount)
  got, want_state = nnx.state(ns['model'], kept), nnx.state(fresh, kept)
  assert len(jax.tree.leaves(got)) == 3  # mean, var, Dropout's count
  _assert_close(jax.tree.leaves(got), jax.tree.leaves(want_state), rtol=1e-6)
  assert not np.allclose(fresh.bn.mean[...], start_mean)


def test_equinox():
  eqx = pytest.importorskip('equinox')
  ns = _run('equinox')
  model = ns['model']

  def naive(m):
    return _naive(lambda xb: jax.vmap(m)(xb.reshape(len(xb), -1)), ns)

  want, want_grads = eqx.filter_value_and_grad(naive)(model)
  _assert_close(ns['loss'], want)
  _assert_close(jax.tree.leaves(eqx.filter(ns['grads'], eqx.is_array)),
                jax.tree.leaves(eqx.filter(want_grads, eqx.is_array)))
