"""danil_jax.method.ops against the stock lax rules: values, first and second
order."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from danil_jax.method import losses
from danil_jax.method import ops
from danil_jax.method import weight_grads

NHWC = ('NHWC', 'HWIO', 'NHWC')

# (input hw, kernel, strides, pads, groups, in channels, out channels)
CONV_CASES = [
    ((9, 10), 3, (2, 2), ((1, 1), (1, 1)), 1, 4, 6),  # ResNet conv2, odd/even
    ((8, 8), 1, (2, 2), ((0, 0), (0, 0)), 1, 4, 6),  # downsample 1x1/2
    ((11, 10), 7, (2, 2), ((3, 3), (3, 3)), 1, 3, 5),  # ImageNet stem 7x7/2
    ((8, 9), 3, (2, 2), ((0, 1), (0, 1)), 1, 4, 6),  # asymmetric ('SAME')
    ((9, 9), 3, (2, 1), ((1, 1), (1, 1)), 1, 2, 3),  # mixed strides
    ((10, 10), 3, (3, 3), ((0, 0), (0, 0)), 1, 2, 3),  # floor-mode leftover
    ((9, 9), 3, (1, 1), ((1, 1), (1, 1)), 1, 4, 6),  # stride 1, unfold x
    ((9, 9), 3, (1, 1), ((1, 1), (1, 1)), 1, 16, 14),  # weight grad as a conv
    ((7, 6), 1, (1, 1), ((0, 0), (0, 0)), 1, 5, 6),  # bottleneck 1x1
    ((9, 9), 3, (2, 2), ((1, 1), (1, 1)), 4, 4, 8),  # depthwise-like groups
    ((9, 9), 2, (2, 2), ((0, 0), (0, 0)), 1, 3, 4),  # space-to-depth, leftover
    ((8, 7), 3, (1, 1), ((0, 1), (1, 0)), 1, 14, 3),  # unfold g, asymmetric
    ((9, 8), 3, (1, 1), ((0, 0), (0, 0)), 1, 3, 14),  # unfold x, VALID
]


def _stock_conv(strides, pads, groups):
  return lambda x, w: lax.conv_general_dilated(
      x, w, strides, pads, dimension_numbers=NHWC,
      feature_group_count=groups)


def _ops_conv(strides, pads, groups):
  return lambda x, w: ops.conv_general_dilated(
      x, w, strides, pads, dimension_numbers=NHWC,
      feature_group_count=groups)


def _conv_inputs(case, dtype=jnp.float32):
  hw, k, _, _, groups, cin, cout = case
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (2, *hw, cin), dtype)
  w = jax.random.normal(kw, (k, k, cin // groups, cout), dtype)
  return x, w


def _double_backprop(conv, x, w, ct):
  """A DANIL-like scalar: a function of the input VJP and of the output."""

  def scalar(x, w, ct):
    y, vjp = jax.vjp(lambda x_: conv(x_, w), x)
    (dx,) = vjp(ct)
    return jnp.sum(jnp.sin(dx)) + jnp.sum(y * jnp.cos(y))

  return jax.grad(scalar, argnums=(0, 1, 2))(x, w, ct)


# Compiled: op by op, the custom rules' many small ops cost seconds a case.
_jit_double_backprop = jax.jit(_double_backprop, static_argnums=0)
_jit_vjp = jax.jit(lambda f, x, w, ct: jax.vjp(f, x, w)[1](ct),
                   static_argnums=0)


def _assert_trees_close(got, want, rtol=1e-5):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.max(jnp.abs(w))) or 1.0
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('case', CONV_CASES)
def test_conv_values_and_gradients_match_stock(case):
  _check_conv_against_stock(case)


# The weight-gradient forms the CPU does not take: the GPU's (conv form,
# per-offset products, polyphase stems) and the CPU's past the unfolding cap.
@pytest.mark.parametrize('case', [CONV_CASES[0], CONV_CASES[2],
                                  CONV_CASES[7], CONV_CASES[8]])
@pytest.mark.parametrize('rules', ['gpu', 'cpu_past_unfold_cap'])
def test_conv_other_weight_grad_forms_match_stock(case, rules, monkeypatch):
  if rules == 'gpu':
    monkeypatch.setattr(weight_grads, 'cpu_rules', lambda: False)
  else:
    monkeypatch.setattr(weight_grads, '_UNFOLD_MAX_ELEMENTS', 0)
  _check_conv_against_stock(case)


def _check_conv_against_stock(case):
  _, _, strides, pads, groups, _, _ = case
  x, w = _conv_inputs(case)
  stock, mine = _stock_conv(strides, pads, groups), _ops_conv(strides, pads,
                                                              groups)
  y = stock(x, w)
  np.testing.assert_array_equal(jax.jit(mine)(x, w), y)  # same forward op
  ct = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  _assert_trees_close(_jit_vjp(mine, x, w, ct), jax.vjp(stock, x, w)[1](ct))
  _assert_trees_close(_jit_double_backprop(mine, x, w, ct),
                      _jit_double_backprop(stock, x, w, ct))


@pytest.mark.parametrize('case', [CONV_CASES[0], CONV_CASES[2],
                                  CONV_CASES[4], CONV_CASES[7]])
def test_conv_check_grads_second_order(case):
  _, _, strides, pads, groups, _, _ = case
  with jax.enable_x64(True):
    x, w = _conv_inputs(case, jnp.float64)
    conv = _ops_conv(strides, pads, groups)
    ct = jax.random.normal(jax.random.PRNGKey(3), conv(x, w).shape,
                           jnp.float64)

    def input_grad_norm(x, w):
      (dx,) = jax.vjp(lambda x_: conv(x_, w), x)[1](ct)
      return jnp.sum(dx ** 2) + jnp.sum(jnp.tanh(conv(x, w)))

    check_grads(jax.jit(input_grad_norm), (x, w), order=2, modes=['rev'],
                eps=1e-4)


def test_stock_rules_context_uses_lax():
  x, w = _conv_inputs(CONV_CASES[0])
  f = lambda x, w: jnp.sum(ops.conv_general_dilated(
      x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC) ** 2)
  custom = str(jax.make_jaxpr(jax.grad(f))(x, w))
  with ops.rules('stock'):
    stock = str(jax.make_jaxpr(jax.grad(f))(x, w))
  assert 'custom_vjp' in custom and 'custom_vjp' not in stock


POOL_CASES = [((9, 8), 3, 2, 1), ((10, 10), 3, 2, 0), ((8, 8), 2, 2, 0),
              ((11, 9), 3, 1, 1)]


def _stock_pool(window, strides, padding):
  return lambda x: nn.max_pool(x, (window,) * 2, (strides,) * 2,
                               padding=[(padding, padding)] * 2)


def _ops_pool(window, strides, padding):
  return lambda x: ops.max_pool(x, (window,) * 2, (strides,) * 2,
                                [(padding, padding)] * 2)


@pytest.mark.parametrize('case', POOL_CASES)
def test_max_pool_matches_stock_with_ties(case):
  hw, window, strides, padding = case
  # ReLU output: many tied zeros; both rules must route to the same element.
  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3)))
  x = x.at[0, :4, :4, 0].set(0.5)  # ties among positive values too
  stock, mine = _stock_pool(window, strides, padding), _ops_pool(
      window, strides, padding)
  y = stock(x)
  np.testing.assert_array_equal(jax.jit(mine)(x), y)
  ct = jax.random.normal(jax.random.PRNGKey(1), y.shape)
  got, want = jax.vjp(mine, x)[1](ct)[0], jax.vjp(stock, x)[1](ct)[0]
  # Same routing (where overlapping windows add up, the order may differ).
  np.testing.assert_array_equal(got != 0, want != 0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('case', POOL_CASES[:2])
def test_max_pool_second_order_through_a_conv(case):
  """d/dw of an input gradient through conv -> ReLU -> max pool."""
  hw, window, strides, padding = case
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))

  def net(pool):
    return lambda x_, w_: pool(jax.nn.relu(lax.conv_general_dilated(
        x_, w_, (1, 1), 'SAME', dimension_numbers=NHWC)))

  stock = net(_stock_pool(window, strides, padding))
  mine = net(_ops_pool(window, strides, padding))
  ct = jax.random.normal(jax.random.PRNGKey(2), stock(x, w).shape)
  _assert_trees_close(_jit_double_backprop(mine, x, w, ct),
                      _jit_double_backprop(stock, x, w, ct))
  with jax.enable_x64(True):
    x64, w64 = x.astype(jnp.float64), w.astype(jnp.float64)
    ct64 = ct.astype(jnp.float64)

    def input_grad_norm(w_):
      (dx,) = jax.vjp(lambda x_: mine(x_, w_), x64)[1](ct64)
      return jnp.sum(dx ** 2)

    check_grads(jax.jit(input_grad_norm), (w64,), order=2, modes=['rev'],
                eps=1e-5)


class _TinyImageNetNet(nn.Module):
  """An ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), a strided
  conv and a head, built from the backbones' `layers`."""

  @nn.compact
  def __call__(self, x, *, train):
    from danil_jax.models import layers  # pylint: disable=g-import-not-at-top
    x = layers.conv(8, 7, 2, 3, name='conv1')(x)
    x = nn.relu(layers.batch_norm(train, name='bn1')(x))
    x = layers.max_pool(x, 3, 2, 1)
    x = nn.relu(layers.conv(8, 3, 2, 1, name='conv2')(x))
    return nn.Dense(3, name='fc')(layers.global_avg_pool(x))


def _danil_value_and_grad(model, variables, x, labels, aux_key='distance'):
  """((loss, aux[aux_key]), d loss / d params) of danil_loss at lam = 1,
  traced afresh on every call (under whatever rules are in force)."""
  def loss(params):
    fn = lambda x_: model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x_,
        train=True, mutable=['batch_stats'])
    value, aux = losses.danil_loss(fn, x, labels, lam=1.0, has_aux=True,
                                   reduction='per_image')
    return value, aux[aux_key]

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])


def test_danil_gradient_of_a_model_equals_stock_rules():
  """A whole DANIL parameter gradient through the backbones' layers is the
  same with the custom rules as with the stock ones."""
  model = _TinyImageNetNet()
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(1), x, train=False)
  labels = jnp.arange(6) % 3

  (value, ld), grads = _danil_value_and_grad(model, variables, x, labels,
                                             'distraction')
  with ops.rules('stock'):
    (value_ref, ld_ref), grads_ref = _danil_value_and_grad(
        model, variables, x, labels, 'distraction')
  assert float(ld_ref) > 0
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-4)
  _assert_trees_close(grads, grads_ref, rtol=1e-4)


# ------------------------------------------------------------- the switch


class _TinyRulesNet(nn.Module):
  """`_TinyImageNetNet` as a model with a `conv_rules` attribute."""
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train):
    return _TinyImageNetNet(name='net')(x, train=train)


def test_conv_rules_stock_and_custom_give_the_same_danil_gradient():
  """The model attribute picks the rules; values, maps and the double
  backprop's parameter gradient agree."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 32, 32, 3))
  labels = jnp.arange(6) % 3
  custom, stock = _TinyRulesNet('custom'), _TinyRulesNet('stock')
  variables = custom.init(jax.random.PRNGKey(1), x, train=False)
  (value, distance), grads = _danil_value_and_grad(custom, variables, x,
                                                   labels)
  (value_ref, distance_ref), grads_ref = _danil_value_and_grad(
      stock, variables, x, labels)
  assert float(jnp.max(distance_ref)) > 0
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  np.testing.assert_allclose(distance, distance_ref, rtol=1e-4)
  _assert_trees_close(grads, grads_ref, rtol=1e-4)


def _input_grad_jaxpr(model, x):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x,
                                                train=False))
  variables = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), variables)
  f = lambda x_: jnp.sum(model.apply(variables, x_, train=False))
  return str(jax.make_jaxpr(jax.grad(f))(x))


@pytest.mark.parametrize('name,size', [('small_resnet', 16), ('resnet50', 32),
                                       ('vgg11_bn', 32)])
def test_conv_rules_change_the_traced_rules_of_each_model(name, size):
  from danil_jax import models  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, size, size, 3))
  jaxprs = {rules: _input_grad_jaxpr(models.create(name, 3,
                                                   conv_rules=rules), x)
            for rules in ops.CONV_RULES}
  assert 'custom_vjp' in jaxprs['custom']
  assert 'custom_vjp' not in jaxprs['stock']
  # This test runs on the CPU, where 'auto' measured the custom rules faster.
  assert jaxprs['auto'] == jaxprs['custom']
  # The model's own attribute wins over an enclosing context: a compiled
  # step follows its model, not a global flag.
  with ops.rules('stock'):
    assert 'custom_vjp' in _input_grad_jaxpr(
        models.create(name, 3, conv_rules='custom'), x)


def test_auto_rules_per_backend_and_bad_values():
  from danil_jax import models  # pylint: disable=g-import-not-at-top
  assert ops.resolve_rules('auto', 'cpu') == 'custom'
  assert ops.resolve_rules('auto', 'gpu') == 'custom'
  assert ops.resolve_rules('auto', 'tpu') == 'stock'  # never measured
  assert ops.resolve_rules('stock', 'cpu') == 'stock'
  with pytest.raises(ValueError, match="conv_rules.*'fast'"):
    models.create('small_resnet', 3, conv_rules='fast')


def test_forward_mode_points_at_stock_rules():
  """jax.jvp through the custom rules raises a TypeError naming 'stock';
  with 'stock' it works and agrees with the custom model's VJP
  (<u, J t> = <J^T u, t>)."""
  from danil_jax import models  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  t = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  custom = models.create('small_resnet', 3, widths=(4, 8, 8),
                         conv_rules='custom')
  stock = custom.clone(conv_rules='stock')
  variables = custom.init(jax.random.PRNGKey(2), x, train=False)
  apply = lambda model: lambda x_: model.apply(variables, x_, train=False)
  with pytest.raises(TypeError, match="conv_rules='stock'"):
    jax.jvp(apply(custom), (x,), (t,))
  jt = jax.jit(lambda x_, t_: jax.jvp(apply(stock), (x_,), (t_,))[1])(x, t)
  u = jax.random.normal(jax.random.PRNGKey(3), jt.shape)
  (jtu,) = jax.jit(lambda x_, u_: jax.vjp(apply(custom), x_)[1](u_))(x, u)
  np.testing.assert_allclose(jnp.vdot(u, jt), jnp.vdot(jtu, t), rtol=1e-4)
