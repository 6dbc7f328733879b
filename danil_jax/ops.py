"""Convolution and max-pool with cheap rules for DANIL's double backprop.

DANIL's input maps A+ - A- (Eq. 2) are an input VJP through the network, and
the outer parameter gradient of Ld (Eq. 5-6) differentiates that VJP again.
Two of JAX's stock rules make the second pass slow on CPU:

* The input gradient of a strided conv is a conv with `lhs_dilation`, and the
  weight gradient of *that* (needed for d Ld / d w) is an rhs-dilated,
  reversed conv that XLA's CPU backend runs on a slow generic path. Here the
  input gradient is an interior `lax.pad` (the stride's zeros made explicit)
  followed by a stride-1 conv with the flipped kernel, so every derivative
  of it is a stride-1 conv or a strided slice.
* The max-pool's VJP is `select_and_scatter_add`, whose own derivative is
  `select_and_gather_add` (pairs packed into 64-bit words on CPU). Here the
  window position of each maximum is stored as a small integer and the VJP is
  a sum of interior pads, linear in the cotangent with constant masks, so its
  derivative is a handful of strided slices.

Every undilated NHWC conv takes the custom rule (stride 1 too), so its weight
gradient can be written in a form XLA:CPU runs fast, also inside `lax.cond`
branches (`steps.train_step(skip_correct=True)`): one matrix product per
kernel offset for 1x1 kernels and RGB inputs, else a canonical NHWC/HWIO conv
of explicitly transposed operands (the stock rule's layout is 5-20x slower
than PyTorch on 1x1 convs, benchmarks/conv_profile.py).

Both are `jax.custom_vjp` functions whose forward passes call the stock lax ops
(identical values) and whose backward passes are ordinary differentiable JAX
ops, so any order of reverse-mode differentiation works. The `fwd` rules call
the custom functions themselves, so an outer `grad` of an inner VJP (DANIL's
double backprop) sees the custom rule at every level, not the stock one.
"""

import contextlib
import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

# Flax's 2D convs use NHWC inputs and HWIO kernels.
_NHWC = ('NHWC', 'HWIO', 'NHWC')


_STOCK = False


@contextlib.contextmanager
def stock_rules():
  """Within this context (at trace time) both ops use the stock lax rules.

  For the benchmark's before/after comparison only.
  """
  global _STOCK
  previous, _STOCK = _STOCK, True
  try:
    yield
  finally:
    _STOCK = previous


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
        (1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated` (the `nn.Conv` hook).

  Undilated 2D NHWC convs take the custom rules of `conv2d`; anything else
  goes to lax unchanged.
  """
  strides = tuple(window_strides)
  plain = (lhs_dilation is None or all(d == 1 for d in lhs_dilation)) and (
      rhs_dilation is None or all(d == 1 for d in rhs_dilation))
  if (not _STOCK and lhs.ndim == 4 and plain and _is_nhwc(dimension_numbers)
      and batch_group_count == 1 and preferred_element_type is None):
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides,
                                    padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d(lhs, rhs, strides, pads, feature_group_count, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def _conv(x, w, strides, pads, groups, precision):
  return lax.conv_general_dilated(
      x, w, strides, pads, dimension_numbers=_NHWC,
      feature_group_count=groups, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(x, w, strides: Sequence[int], pads, groups: int = 1,
           precision=None):
  """NHWC/HWIO conv, values identical to `lax.conv_general_dilated`."""
  return _conv(x, w, strides, pads, groups, precision)


def _conv2d_fwd(x, w, strides, pads, groups, precision):
  # Calling the custom function (not `_conv`) keeps the custom rule visible
  # to an enclosing differentiation, as in grad-of-VJP.
  return conv2d(x, w, strides, pads, groups, precision), (x, w)


def _transpose_kernel(w, groups):
  """HWIO (kh, kw, I/G, O) -> flipped (kh, kw, O/G, I) for the input grad."""
  kh, kw, in_per_group, out = w.shape
  w = w[::-1, ::-1]
  w = w.reshape(kh, kw, in_per_group, groups, out // groups)
  w = jnp.transpose(w, (0, 1, 4, 3, 2))
  return w.reshape(kh, kw, out // groups, groups * in_per_group)


def _canonical(x):
  # Materialise a transposed operand: XLA would fold the transpose into the
  # conv's dimension numbers, a layout its CPU backend runs on a slow generic
  # loop inside `lax.cond` branches (it re-canonicalises only elsewhere).
  return lax.optimization_barrier(x)


def conv_input_grad(g, w, input_hw, strides, pads, groups=1, precision=None):
  """d conv / d x applied to cotangent `g`: interior pad + stride-1 conv.

  Per spatial axis (input N, kernel K, stride s, pads (pl, ph), output M): the
  cotangent dilated by s is correlated in full with the flipped kernel, and
  the rows of the padded input are cropped back to x. Folding the crop and
  the full-correlation margin into one `lax.pad` gives low = K-1-pl and
  high = N + pl - 1 - (M-1)s (negative pads crop), then a VALID conv.
  """
  config = [(0, 0, 0)]
  for n, k, s, (pl, _), m in zip(input_hw, w.shape[:2], strides, pads,
                                 g.shape[1:3]):
    low = k - 1 - pl
    high = n + pl - 1 - (m - 1) * s
    config.append((low, high, s - 1))
  config.append((0, 0, 0))
  g_dilated = lax.pad(g, jnp.zeros((), g.dtype), config)
  # `conv2d` again, so that differentiating this input gradient (the double
  # backprop) also gets these rules.
  return conv2d(g_dilated, _canonical(_transpose_kernel(w, groups)), (1, 1),
                ((0, 0), (0, 0)), groups, precision)


# Below this many input channels a conv's weight gradient is cheaper as one
# matrix product per kernel offset (the ImageNet stem's 3 RGB channels).
_FEW_CHANNELS = 4


def conv_weight_grad(x, g, kernel_hw, strides, pads, precision=None):
  """d conv / d w applied to `g` (groups=1).

  dw[a, b, i, o] = sum_{n, m} xpad[n, a + m*s, i] g[n, m, o]. XLA:CPU runs
  the stock rule, a conv with the batch as contraction and the whole output
  map as "kernel", 5-20x slower than PyTorch (benchmarks/conv_profile.py).
  For 1x1 kernels and few input channels it is written as one matrix
  product per kernel offset (a strided slice of x against g); otherwise as
  a canonical NHWC/HWIO conv of transposed operands, which XLA:CPU also runs
  fast inside `lax.cond` branches, unlike the stock rule's layout.
  """
  if tuple(kernel_hw) == (1, 1) or x.shape[-1] <= _FEW_CHANNELS:
    return _weight_grad_as_products(x, g, kernel_hw, strides, pads, precision)
  conv_pads = []
  for n, k, s, (pl, _), m in zip(x.shape[1:3], kernel_hw, strides, pads,
                                 g.shape[1:3]):
    conv_pads.append((pl, k + (m - 1) * s - n - pl))
  dw = lax.conv_general_dilated(
      _canonical(jnp.transpose(x, (3, 1, 2, 0))),
      _canonical(jnp.transpose(g, (1, 2, 0, 3))), (1, 1),
      conv_pads, rhs_dilation=tuple(strides), dimension_numbers=_NHWC,
      precision=precision)
  return jnp.transpose(dw, (1, 2, 0, 3))


def _window_slices(x_padded, window, strides, out_hw):
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
  config = [(0, 0, 0)]
  for n, k, s, (pl, _), m in zip(x.shape[1:3], kernel_hw, strides, pads,
                                 g.shape[1:3]):
    # Pad high only as far as the last window reaches (floor-mode leftovers
    # of the input are never read).
    config.append((pl, max(0, k + (m - 1) * s - n - pl), 0))
  config.append((0, 0, 0))
  x_padded = lax.pad(x, jnp.zeros((), x.dtype), config)
  out_hw = g.shape[1:3]
  products = [
      jnp.einsum('nhwi,nhwo->io', window, g, precision=precision)
      for window in _window_slices(x_padded, kernel_hw, strides, out_hw)]
  kh, kw = kernel_hw
  return jnp.stack(products).reshape(kh, kw, x.shape[-1], g.shape[-1])


def _conv2d_bwd(strides, pads, groups, precision, res, g):
  x, w = res
  dx = conv_input_grad(g, w, x.shape[1:3], strides, pads, groups, precision)
  if groups == 1:
    dw = conv_weight_grad(x, g, w.shape[:2], strides, pads, precision)
  else:
    _, w_vjp = jax.vjp(lambda w_: _conv(x, w_, strides, pads, groups,
                                        precision), w)
    (dw,) = w_vjp(g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# -------------------------------------------------------------------- pooling


def _pad_neg_inf(x, pads):
  return lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                 [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])


def max_pool(x, window: Sequence[int], strides: Sequence[int], pads):
  """NHWC max pool with -inf padding; values equal to `flax.linen.max_pool`."""
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if _STOCK:
    return _reduce_window_max(x, tuple(window), tuple(strides), pads)
  return _max_pool(x, tuple(window), tuple(strides), pads, x.shape[1:3])


def _reduce_window_max(x, window, strides, pads):
  # What `flax.linen.max_pool` computes; its VJP is select_and_scatter_add.
  # A Python -inf init lets lax pick the differentiable reduce_window_max.
  return lax.reduce_window(
      x, -jnp.inf, lax.max, (1, *window, 1),
      (1, *strides, 1), [(0, 0), *pads, (0, 0)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x, window, strides, pads, input_hw):
  del input_hw  # only the backward rule needs it
  return _reduce_window_max(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads, input_hw):
  y = _max_pool(x, window, strides, pads, input_hw)
  # Index of the first maximum in row-major window order: the element the
  # stock rule (select_and_scatter with `>=`) routes the gradient to. A
  # running argmax rather than `view == y`: XLA may recompute x in another
  # fusion with different rounding, and an equality test would then miss.
  views = _window_slices(_pad_neg_inf(lax.stop_gradient(x), pads), window,
                         strides, y.shape[1:3])
  best = next(views)
  index = jnp.zeros(y.shape, jnp.int8)
  for k, view in enumerate(views, start=1):
    better = view > best
    best = jnp.where(better, view, best)
    index = jnp.where(better, jnp.int8(k), index)
  return y, index


def max_pool_input_grad(g, index, input_hw, window, strides, pads):
  """Scatters g to each window's argmax: a sum of masked interior pads.

  Linear in g with `index` constant, so its derivative is masked strided
  slices of the incoming cotangent (no select-and-gather).
  """
  kh, kw = window
  (sh, sw), (oh, ow) = strides, g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  dx = None
  for k in range(kh * kw):
    i, j = divmod(k, kw)
    config = [(0, 0, 0)]
    for off, n, s, (pl, _), m in ((i, input_hw[0], sh, pads[0], oh),
                                  (j, input_hw[1], sw, pads[1], ow)):
      # Output m reads padded row off + m*s, i.e. input row off + m*s - pl.
      config.append((off - pl, n - (off - pl) - (m - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    term = lax.pad(jnp.where(index == k, g, zero), zero, config)
    dx = term if dx is None else dx + term
  return dx


def _max_pool_bwd(window, strides, pads, input_hw, index, g):
  return (max_pool_input_grad(g, index, input_hw, window, strides, pads),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
