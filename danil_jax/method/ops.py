"""Convolution and max-pool with cheap rules for DANIL's double backprop.

DANIL's input maps A+ - A- (Eq. 2) are an input VJP through the network, and
the outer parameter gradient of Ld (Eq. 5-6) differentiates that VJP again.
JAX's stock rules make that second pass slow on CPU:

* The input gradient of a strided conv is a conv with `lhs_dilation` (s*s
  times the forward's multiply-adds, most on zeros), and the weight
  gradient of *that* is an rhs-dilated, reversed conv on a slow generic
  path. Here it is polyphase: s*s stride-1 convs of the cotangent with the
  kernel's phases, interleaved (`conv_input_grad`); strided convs with RGB
  inputs (stems) instead fold the input space-to-depth on the CPU and take
  the stride-1 rules (`_space_to_depth_bwd`). Every derivative of either is
  a stride-1 conv, a slice or a reshape.
* The max-pool's VJP is `select_and_scatter_add`, whose own derivative is
  `select_and_gather_add` (pairs packed into 64-bit words on CPU). Here the
  window position of each maximum is stored as a small integer and the VJP is
  a sum of interior pads, linear in the cotangent with constant masks, so its
  derivative is a handful of strided slices.
* Weight gradients take the forms of `danil_jax.method.weight_grads` (on the CPU
  one matrix product over an unfolded operand), also inside `lax.cond`
  branches (the train step with `skip_correct=True` (trainer/train_step.py)). Every undilated NHWC
  conv takes the custom rule (stride 1 too) for that reason.

The CPU remedies (polyphase and space-to-depth input gradients, unfolded
weight gradients, materialised transposes) apply on the CPU only, where
they were measured; elsewhere the custom rules are the form measured on the
H200 (interior-pad input gradient, conv-form weight gradients), without the
materialised transposes (a CPU remedy that cost memory there).

Which rules a model traces with is its `conv_rules` attribute
(`config.model.conv_rules`, `models.create(..., conv_rules=...)`): 'auto'
(the measured-faster choice per backend, `resolve_rules`), 'custom' or
'stock'.

Both are `jax.custom_vjp` functions whose forward passes call the stock lax ops
(identical values) and whose backward passes are ordinary differentiable JAX
ops, so any order of reverse-mode differentiation works. The `fwd` rules call
the custom functions themselves, so an outer `grad` of an inner VJP (DANIL's
double backprop) sees the custom rule at every level, not the stock one.
"""

import contextlib
import contextvars
import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

from danil_jax.method import weight_grads

# Flax's 2D convs use NHWC inputs and HWIO kernels.
_NHWC = ('NHWC', 'HWIO', 'NHWC')


# config.model.conv_rules: 'custom' (the rules here), 'stock' (JAX's) or
# 'auto', what benchmarks/README.md measured fastest on this backend.
CONV_RULES = ('auto', 'custom', 'stock')
# Backends whose DANIL step was measured faster with the custom rules
# (benchmarks/README.md): a 2-core CPU (resnet50 224/b8: 9.3 s stock vs
# 4.4 s) and the H200 (2.92x vs 2.38x plain in fp32, 4.75x vs 2.31x in
# bf16). Never measured (TPU, and any other): 'stock'.
_CUSTOM_MEASURED_FASTER = ('cpu', 'gpu')

FORWARD_MODE_HINT = (
    "danil_jax's conv/max-pool rules are jax.custom_vjp functions, which have "
    'no forward-mode derivative (jax.jvp, jax.jacfwd, jax.linearize, '
    "jax.hessian). Build the model with conv_rules='stock' "
    "(models.create(..., conv_rules='stock'), config.model.conv_rules) for "
    'forward-mode differentiation.')

# The rules that `conv_general_dilated` and `max_pool` take while tracing;
# set by a model's `__call__` (`with_model_rules`) from its own attribute,
# so each traced model uses its own choice.
_RULES = contextvars.ContextVar('danil_jax_conv_rules', default='auto')


def resolve_rules(conv_rules: str, backend: str | None = None) -> str:
  """'custom' or 'stock' for `conv_rules` on `backend` (default: JAX's)."""
  if conv_rules not in CONV_RULES:
    raise ValueError(f'conv_rules (config.model.conv_rules) must be one of '
                     f'{CONV_RULES}, got {conv_rules!r}')
  if conv_rules != 'auto':
    return conv_rules
  backend = backend or jax.default_backend()
  return 'custom' if backend in _CUSTOM_MEASURED_FASTER else 'stock'


@contextlib.contextmanager
def rules(conv_rules: str):
  """Within this context, at trace time, both ops take `conv_rules`."""
  token = _RULES.set(resolve_rules(conv_rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def _custom() -> bool:
  return resolve_rules(_RULES.get()) == 'custom'


def with_model_rules(call):
  """Decorates a model's `__call__` (below `nn.compact`): the convs and
  max-pools it traces take the rules of its `conv_rules` attribute, and
  forward-mode differentiation through the custom rules raises a TypeError
  that says to use 'stock'."""

  @functools.wraps(call)
  def wrapped(self, *args, **kwargs):
    try:
      with rules(self.conv_rules):
        return call(self, *args, **kwargs)
    except TypeError as error:
      if 'forward-mode' in str(error) and 'custom_vjp' in str(error):
        raise TypeError(f'{type(self).__name__}(conv_rules='
                        f'{self.conv_rules!r}): {FORWARD_MODE_HINT}') from error
      raise

  return wrapped


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
  if (_custom() and lhs.ndim == 4 and plain and _is_nhwc(dimension_numbers)
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


def conv_input_grad(g, w, input_hw, strides, pads, groups=1, precision=None):
  """d conv / d x applied to cotangent `g`, as stride-1 convs only.

  Stride 1: one full correlation of `g` with the flipped kernel (a `lax.pad`
  folding the margin and the crop back to x, then a VALID conv).

  Stride s > 1 (polyphase): input row i = t*s + r - pl (residue r) only
  receives kernel taps a = r + s*c, so
      dx[t*s + r - pl] = sum_c g[t - c] w[r + s*c],
  a stride-1 full correlation of `g` with the sub-kernel w[r::s]. The s*s
  phases are computed apart and interleaved. This costs the forward's
  multiply-adds, where the stock rule (an lhs-dilated conv) and an interior
  pad of `g` pay s*s times as many on the zeros; the derivatives of a
  stride-1 conv and an interleave are again stride-1 convs and slices.

  Off the CPU, strided convs take the form measured on the H200: `g`
  dilated by an interior pad, then one stride-1 full correlation; the
  polyphase form has not run on a GPU.
  """
  if all(s == 1 for s in strides) or not weight_grads.cpu_rules():
    # Per axis: low = K-1-pl, high = N + pl - 1 - (M-1)s (negative crops).
    config = [(0, 0, 0)]
    for n, k, s, (pl, _), m in zip(input_hw, w.shape[:2], strides, pads,
                                   g.shape[1:3]):
      config.append((k - 1 - pl, n + pl - 1 - (m - 1) * s, s - 1))
    config.append((0, 0, 0))
    return _full_correlation(lax.pad(g, jnp.zeros((), g.dtype), config), w,
                             groups, precision)
  (sh, sw), (ph, pw) = strides, (pads[0][0], pads[1][0])
  # Phase outputs t = 0..T-1 cover input rows up to T*s - 1 - pl >= n - 1.
  th, tw = (-(-(n + pl) // s) for n, (pl, _), s in zip(input_hw, pads,
                                                       strides))
  phases = []
  for rh in range(sh):
    for rw in range(sw):
      sub = w[rh::sh, rw::sw]
      if sub.shape[0] == 0 or sub.shape[1] == 0:  # kernel smaller than s
        phases.append(jnp.zeros((g.shape[0], th, tw, w.shape[2] * groups),
                                g.dtype))
        continue
      config = [(0, 0, 0)]
      for k, t, m in zip(sub.shape[:2], (th, tw), g.shape[1:3]):
        config.append((k - 1, t - m, 0))  # negative high pad crops
      config.append((0, 0, 0))
      phases.append(_full_correlation(
          lax.pad(g, jnp.zeros((), g.dtype), config), sub, groups, precision))
  full = jnp.stack(phases).reshape(sh, sw, *phases[0].shape)
  full = jnp.transpose(full, (2, 3, 0, 4, 1, 5)).reshape(
      g.shape[0], th * sh, tw * sw, -1)
  return full[:, ph:ph + input_hw[0], pw:pw + input_hw[1]]


def _full_correlation(g_padded, w, groups, precision):
  # `conv2d` again, so that differentiating this input gradient (the double
  # backprop) also gets these rules.
  kernel = weight_grads.materialised(_transpose_kernel(w, groups))
  return conv2d(g_padded, kernel, (1, 1), ((0, 0), (0, 0)), groups,
                precision)


# Space-to-depth backward for strided convs with at most this many channels
# once folded (RGB x 2 x 2 phases = 12), CPU only.
_FOLDED_CHANNELS = 12


def _conv2d_bwd(strides, pads, groups, precision, res, g):
  x, w = res
  if (groups == 1 and max(strides) > 1 and weight_grads.cpu_rules()
      and x.shape[-1] * strides[0] * strides[1] <= _FOLDED_CHANNELS):
    dx, dw = _space_to_depth_bwd(x, w, g, strides, pads, precision)
  elif groups == 1:
    dx = conv_input_grad(g, w, x.shape[1:3], strides, pads, 1, precision)
    dw = weight_grads.conv_weight_grad(x, g, w.shape[:2], strides, pads,
                                       precision)
  else:
    dx = conv_input_grad(g, w, x.shape[1:3], strides, pads, groups,
                         precision)
    _, w_vjp = jax.vjp(lambda w_: _conv(x, w_, strides, pads, groups,
                                        precision), w)
    (dw,) = w_vjp(g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _space_to_depth_bwd(x, w, g, strides, pads, precision):
  """Both gradients of a strided conv with few input channels (RGB stems).

  Per axis, with the kernel zero-padded to q*s taps, y[m] = sum_{j<q, r<s}
  xpad[(m + j)*s + r] w[j*s + r]: a stride-1 conv with a q-tap kernel over
  the input folded to s*s*C channels. Its gradients are the stride-1 rules
  above; the polyphase input gradient would instead be s*s convs with C
  (3) output channels, which XLA:CPU runs about 3x slower, and so do their
  weight gradients in the double backprop.
  """
  qh, qw = (-(-k // s) for k, s in zip(w.shape[:2], strides))
  # Padded length s*(m + q - 1): every window, no floor-mode leftover.
  lengths = [s * (m + q - 1) for s, m, q in zip(strides, g.shape[1:3],
                                                 (qh, qw))]
  crop = [(pl, length - n - pl) for n, (pl, _), length in zip(x.shape[1:3],
                                                              pads, lengths)]
  x_folded = _space_to_depth(
      lax.pad(x, jnp.zeros((), x.dtype),
              [(0, 0, 0), *((lo, hi, 0) for lo, hi in crop), (0, 0, 0)]),
      strides)
  kh, kw = w.shape[:2]
  # The kernel folds like an image with its output channels as the batch.
  w_pad = jnp.pad(w, ((0, qh * strides[0] - kh), (0, qw * strides[1] - kw),
                      (0, 0), (0, 0)))
  w_folded = jnp.transpose(
      _space_to_depth(jnp.transpose(w_pad, (3, 0, 1, 2)), strides),
      (1, 2, 3, 0))
  no_pads = ((0, 0), (0, 0))
  dx_folded = conv_input_grad(g, w_folded, x_folded.shape[1:3], (1, 1),
                              no_pads, 1, precision)
  dw_folded = weight_grads.conv_weight_grad(x_folded, g, (qh, qw), (1, 1),
                                            no_pads, precision)
  dx_pad = _depth_to_space(dx_folded, strides)
  dx = lax.pad(dx_pad, jnp.zeros((), dx_pad.dtype),
               [(0, 0, 0), *((-lo, -hi, 0) for lo, hi in crop), (0, 0, 0)])
  dw = jnp.transpose(
      _depth_to_space(jnp.transpose(dw_folded, (3, 0, 1, 2)), strides),
      (1, 2, 3, 0))
  return dx, dw[:kh, :kw]


def _space_to_depth(a, strides):
  """[N, H, W, C] -> [N, H/sh, W/sw, sh*sw*C], channels ordered (rh, rw, c)."""
  (n, h, w, c), (sh, sw) = a.shape, strides
  a = a.reshape(n, h // sh, sh, w // sw, sw, c)
  return jnp.transpose(a, (0, 1, 3, 2, 4, 5)).reshape(n, h // sh, w // sw, -1)


def _depth_to_space(a, strides):
  """The inverse of `_space_to_depth`."""
  (n, h, w, folded), (sh, sw) = a.shape, strides
  a = a.reshape(n, h, w, sh, sw, folded // (sh * sw))
  return jnp.transpose(a, (0, 1, 3, 2, 4, 5)).reshape(n, h * sh, w * sw, -1)

conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# -------------------------------------------------------------------- pooling


def _pad_neg_inf(x, pads):
  return lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                 [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])


def max_pool(x, window: Sequence[int], strides: Sequence[int], pads):
  """NHWC max pool with -inf padding; values equal to `flax.linen.max_pool`."""
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if not _custom():
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
  views = weight_grads.window_slices(
      _pad_neg_inf(lax.stop_gradient(x), pads), window, strides, y.shape[1:3])
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
