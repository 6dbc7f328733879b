"""Weight gradients of NHWC/HWIO convs in forms XLA runs fast.

dw[a, b, i, o] = sum_{n, m} xpad[n, a + m*s, i] g[n, m, o] is needed twice
per conv in a plain step's backward and again in DANIL's double backprop
(Eq. 5-6 differentiate the input VJP of Eq. 2, whose convs have weight
gradients of their own). JAX's stock rule is a conv with the batch as the
contraction and the whole output map as "kernel"; XLA:CPU runs it 2-20x
slower than PyTorch (benchmarks/conv_profile.py). `ops.conv2d`'s backward
calls `conv_weight_grad` here instead.
"""

import jax
from jax import lax
import jax.numpy as jnp

# Flax's 2D convs use NHWC inputs and HWIO kernels.
_NHWC = ('NHWC', 'HWIO', 'NHWC')

# Weight-gradient forms. XLA:CPU (YNNPACK) runs one large matrix product far
# faster than a conv whose "kernel" is the whole output map (the stock rule's
# form, 2-20x slower than PyTorch there, benchmarks/conv_profile.py), so on
# the CPU weight gradients are a product over an unfolded operand, up to
# this many elements of unfolding (256 MiB in float32); past it, one product
# per kernel offset.
_UNFOLD_MAX_ELEMENTS = 2 ** 26
# Except between these channel counts (the smaller of in and out), where
# the unfolded product is a thin [kh*kw*C, C] output over a long contraction
# and the conv form was faster: the demo model's 16- and 32-channel convs
# (an A/B of its plain step: 150 ms with them as convs, 160 ms unfolding the
# 32s too, 225 ms unfolding all; resnet50 has none).
_CONV_FORM_CHANNELS = (13, 63)
# Off the CPU every weight gradient is the conv form, as measured on the
# H200 (the per-offset products and the unfolding never ran there).


def cpu_rules() -> bool:
  return jax.default_backend() == 'cpu'


def conv_weight_grad(x, g, kernel_hw, strides, pads, precision=None):
  """d conv / d w applied to `g` (groups=1), in the form `weight_grad_form`
  names for these shapes on this backend. Values equal the stock rule's to
  float rounding (tests/method/test_weight_grads.py)."""
  form = weight_grad_form(x.shape, g.shape, kernel_hw, strides)
  if form in ('unfold x', 'unfold g'):
    return _weight_grad_by_unfolding(x, g, kernel_hw, strides, pads,
                                     form[-1], precision)
  if form == 'products':
    return _weight_grad_as_products(x, g, kernel_hw, strides, pads, precision)
  conv_pads = _window_reach(x.shape, g.shape, kernel_hw, strides, pads)
  dw = lax.conv_general_dilated(
      materialised(jnp.transpose(x, (3, 1, 2, 0))),
      materialised(jnp.transpose(g, (1, 2, 0, 3))), (1, 1),
      conv_pads, rhs_dilation=tuple(strides), dimension_numbers=_NHWC,
      precision=precision)
  return jnp.transpose(dw, (1, 2, 0, 3))


def weight_grad_form(x_shape, g_shape, kernel_hw, strides) -> str:
  """'unfold x', 'unfold g', 'products' (one per kernel offset) or 'conv'.

  * CPU: one product over the unfolded operand with fewer channels (g only
    for stride 1, as it is unfolded on the input grid); 'products' past
    `_UNFOLD_MAX_ELEMENTS`; 'conv' for 3x3-type kernels in the channel
    range of `_CONV_FORM_CHANNELS`.
  * Elsewhere: 'conv', a canonical NHWC/HWIO conv of transposed operands.
  """
  kh, kw = kernel_hw
  n, (m1, m2), cin, cout = x_shape[0], g_shape[1:3], x_shape[-1], g_shape[-1]
  one_by_one = (kh, kw) == (1, 1)
  if not cpu_rules():
    return 'conv'
  low, high = _CONV_FORM_CHANNELS
  if not one_by_one and low <= min(cin, cout) <= high:
    return 'conv'
  if all(s == 1 for s in strides) and cout < cin:
    form, size = 'unfold g', n * (m1 + kh - 1) * (m2 + kw - 1) * kh * kw * cout
  else:
    form, size = 'unfold x', n * m1 * m2 * kh * kw * cin
  return form if size <= _UNFOLD_MAX_ELEMENTS else 'products'


def materialised(x):
  # Materialise a transposed operand: XLA would fold the transpose into the
  # conv's dimension numbers, a layout its CPU backend runs on a slow generic
  # loop inside `lax.cond` branches (it re-canonicalises only elsewhere).
  # A CPU remedy: on the H200 the copies cost memory (DANIL temp 3.00x plain
  # vs 2.52x with the stock rules), so other backends leave XLA the choice.
  return lax.optimization_barrier(x) if cpu_rules() else x


def _contract_rows(a, b, precision):
  """a^T b for row-major [rows, .] matrices, without a transpose of either."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision)


def _smaller_left(a, b, precision):
  """a^T b, computed as (b^T a)^T when b has fewer columns.

  XLA:CPU may materialise the left operand transposed; the narrower one is
  the cheaper to move (g for a bottleneck's 4x-reducing conv1: without this,
  a fifth of resnet50's step went to those transposes).
  """
  if a.shape[1] <= b.shape[1]:
    return _contract_rows(a, b, precision)
  return _contract_rows(b, a, precision).T


def _side_by_side(views):
  """The views concatenated along channels, written in place one by one:
  XLA:CPU's concatenate materialises every view first (1.6x slower)."""
  channels = views[0].shape[-1]
  out = jnp.zeros((*views[0].shape[:-1], channels * len(views)),
                  views[0].dtype)
  for k, view in enumerate(views):
    out = lax.dynamic_update_slice(out, view, (0, 0, 0, k * channels))
  return out


def _weight_grad_by_unfolding(x, g, kernel_hw, strides, pads, which,
                              precision):
  """`conv_weight_grad` as one matrix product over an unfolded operand.

  Unfolding x (kh*kw window views side by side in the channels):
  cols[p, (a, b, i)] = xpad[p*s + (a, b), i] on the output grid, and
  dw = cols^T g. Unfolding g (stride 1, fewer output channels, as in the
  double backprop of an RGB stem's input gradient): shift g the other way,
  cols[q, (a, b, o)] = g[q - (a, b), o] on the padded input grid, and
  dw = xpad^T cols. A product per offset instead reads the other operand
  kh*kw times (7-19x slower in those stems' double backprop).
  """
  (kh, kw), (m1, m2) = kernel_hw, g.shape[1:3]
  cin, cout = x.shape[-1], g.shape[-1]
  x_pad = _pad_to_window_reach(x, g.shape, kernel_hw, strides, pads)
  if which == 'x':
    cols = _side_by_side(
        list(window_slices(x_pad, kernel_hw, strides, (m1, m2))))
    dw = _smaller_left(cols.reshape(-1, kh * kw * cin), g.reshape(-1, cout),
                       precision)
    return dw.reshape(kh, kw, cin, cout)
  g_pad = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
  rows, columns = m1 + kh - 1, m2 + kw - 1
  cols = _side_by_side(
      [g_pad[:, kh - 1 - a:kh - 1 - a + rows, kw - 1 - b:kw - 1 - b + columns]
       for a in range(kh) for b in range(kw)])
  dw = _smaller_left(x_pad.reshape(-1, cin), cols.reshape(-1, kh * kw * cout),
                     precision)
  return jnp.transpose(dw.reshape(cin, kh, kw, cout), (1, 2, 0, 3))


def _window_reach(x_shape, g_shape, kernel_hw, strides, pads):
  """Per spatial axis, (low, high) padding of x to exactly the rows that the
  windows read: (m-1)*s + k in all, so a negative high crops floor-mode
  leftovers of the input, which no window reads."""
  return [(pl, (m - 1) * s + k - n - pl) for n, k, s, (pl, _), m in zip(
      x_shape[1:3], kernel_hw, strides, pads, g_shape[1:3])]


def _pad_to_window_reach(x, g_shape, kernel_hw, strides, pads):
  reach = _window_reach(x.shape, g_shape, kernel_hw, strides, pads)
  return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [
      (lo, hi, 0) for lo, hi in reach] + [(0, 0, 0)])


def window_slices(x_padded, window, strides, out_hw):
  """The window's shifted, strided views of the padded input, row-major."""
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  for i in range(kh):
    for j in range(kw):
      yield lax.slice(
          x_padded, (0, i, j, 0),
          (x_padded.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1,
           x_padded.shape[3]), (1, sh, sw, 1))


def _weight_grad_as_products(x, g, kernel_hw, strides, pads, precision):
  """`conv_weight_grad` as kh*kw products [N*M*M, I]^T [N*M*M, O]."""
  x_padded = _pad_to_window_reach(x, g.shape, kernel_hw, strides, pads)
  cin, cout = x.shape[-1], g.shape[-1]
  g_rows = g.reshape(-1, cout)
  products = []
  for window in window_slices(x_padded, kernel_hw, strides, g.shape[1:3]):
    products.append(_smaller_left(window.reshape(-1, cin), g_rows, precision))
  kh, kw = kernel_hw
  return jnp.stack(products).reshape(kh, kw, cin, cout)


