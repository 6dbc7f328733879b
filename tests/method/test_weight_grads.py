"""danil_jax.method.weight_grads against JAX's stock weight gradient of a
conv."""

import jax
from jax import lax
import numpy as np
import pytest

from danil_jax.method import weight_grads

NHWC = ('NHWC', 'HWIO', 'NHWC')

# (x shape, kernel hw, strides, pads, out channels, the form the CPU takes)
CASES = [
    ((2, 9, 8, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), 8, 'unfold x'),  # RGB
    ((2, 9, 9, 16), (3, 3), (1, 1), ((1, 1), (1, 1)), 16, 'conv'),
    ((2, 6, 5, 64), (3, 3), (1, 1), ((1, 1), (1, 1)), 64, 'unfold x'),
    ((2, 8, 7, 80), (3, 3), (1, 1), ((0, 1), (1, 0)), 3, 'unfold g'),
    ((2, 9, 9, 6), (3, 3), (2, 2), ((1, 1), (1, 1)), 5, 'unfold x'),
    ((2, 7, 7, 64), (3, 3), (2, 2), ((1, 1), (1, 1)), 64, 'unfold x'),
    ((2, 10, 10, 4), (3, 2), (3, 2), ((0, 0), (0, 0)), 5, 'unfold x'),
    ((2, 8, 8, 12), (1, 1), (2, 2), ((0, 0), (0, 0)), 4, 'unfold x'),
    ((2, 7, 6, 12), (1, 1), (1, 1), ((0, 0), (0, 0)), 4, 'unfold g'),
]


def _inputs(case):
  x_shape, kernel_hw, strides, pads, cout, _ = case
  kx, kg = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, x_shape)
  w = jax.numpy.zeros((*kernel_hw, x_shape[-1], cout))
  y_shape = jax.eval_shape(
      lambda x_: lax.conv_general_dilated(x_, w, strides, pads,
                                          dimension_numbers=NHWC), x).shape
  g = jax.random.normal(kg, y_shape)
  (want,) = jax.vjp(lambda w_: lax.conv_general_dilated(
      x, w_, strides, pads, dimension_numbers=NHWC), w)[1](g)
  return x, g, want


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('rules', ['cpu', 'cpu_past_unfold_cap', 'gpu'])
def test_weight_grad_matches_stock(case, rules, monkeypatch):
  _, kernel_hw, strides, pads, _, form = case
  monkeypatch.setattr(weight_grads, 'cpu_rules', lambda: rules != 'gpu')
  if rules == 'cpu_past_unfold_cap':
    monkeypatch.setattr(weight_grads, '_UNFOLD_MAX_ELEMENTS', 0)
    form = 'conv' if form == 'conv' else 'products'
  elif rules == 'gpu':
    form = 'conv'  # the form measured on the H200
  x, g, want = _inputs(case)
  # The case exercises the form it names.
  assert weight_grads.weight_grad_form(x.shape, g.shape, kernel_hw,
                                       strides) == form
  got = jax.jit(lambda x_, g_: weight_grads.conv_weight_grad(
      x_, g_, kernel_hw, strides, pads))(x, g)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5,
                             atol=1e-5 * float(np.abs(want).max()))
