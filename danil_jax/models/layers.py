"""Torch-exact building blocks shared by the ImageNet backbones.

The backbones run PyTorch checkpoints, so every layer here reproduces the
corresponding `torch.nn` layer bit for bit in float32 rather than the Flax
defaults: explicit symmetric padding instead of 'SAME' (which pads the extra
pixel at the bottom/right for even inputs and strided convs, torch does not),
BatchNorm with torch's eps, momentum (converted to Flax's convention) and
unbiased running variance, and pools with torch's padding semantics. Module
names are chosen by the callers so that the parameter tree mirrors the torch
`state_dict` paths.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from danil_jax.method import ops

# torch updates running stats as r = (1 - m) * r + m * batch, with m = 0.1 by
# default; Flax's `momentum` is the weight of the old value.
TORCH_BN_MOMENTUM = 0.9


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def conv(features, kernel_size, strides=1, padding=0, *, groups=1,
         use_bias=False, dtype=jnp.float32, name=None) -> nn.Conv:
  """`torch.nn.Conv2d` as `nn.Conv` with explicit symmetric padding (HWIO)."""
  ph, pw = _pair(padding)
  return nn.Conv(
      features, _pair(kernel_size), _pair(strides),
      padding=[(ph, ph), (pw, pw)], feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, name=name,
      # Same values; cheaper double backprop through strided convs (DANIL).
      conv_general_dilated=ops.conv_general_dilated)


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d(eps=eps, momentum=0.1)` over the last axis.

  Flax's `nn.BatchNorm` normalises exactly like torch but stores the *biased*
  batch variance in its running average, while torch stores the unbiased one
  (n / (n - 1) times larger, n = B*H*W). With the small spatial maps of the
  last stages the two differ by percents (n = 8 at layer4 of a ResNet-50 on
  64x64 inputs, batch 2), so a model fine-tuned here would evaluate
  differently from the same model fine-tuned in torch. This module keeps
  torch's convention; its variables are named like Flax's (`scale`, `bias`,
  `batch_stats` `mean`, `var`) so checkpoints convert one to one.

  Statistics are computed in float32 with the two-pass variance (the one-pass
  E[x^2] - E[x]^2 form loses digits when the mean is large relative to the
  spread, which breaks the 1e-4 logits match with torch in train mode).
  """
  use_running_average: bool
  momentum: float = TORCH_BN_MOMENTUM  # Flax sense: weight of the old value
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,),
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    f32 = jnp.promote_types(x.dtype, jnp.float32)  # float64 stays float64
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      x32 = x.astype(f32)
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        n = np.prod([x.shape[a] for a in axes])
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * unbiased
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = (x.astype(f32) - mean) * mul + bias
    return y.astype(self.dtype)


def batch_norm(train: bool, *, eps: float = 1e-5, dtype=jnp.float32,
               name=None) -> BatchNorm:
  """`torch.nn.BatchNorm2d(eps=eps, momentum=0.1)`, see `BatchNorm`."""
  return BatchNorm(use_running_average=not train, epsilon=eps, dtype=dtype,
                   name=name)


def max_pool(x, window: int, strides: int, padding: int = 0):
  """`torch.nn.MaxPool2d(window, strides, padding)` (floor mode).

  Flax pads max pools with -inf, exactly like torch's implicit padding.
  """
  # Same values as nn.max_pool; a VJP with a cheap derivative (DANIL).
  return ops.max_pool(x, (window, window), (strides, strides),
                      [(padding, padding)] * 2)


def avg_pool_exclude_pad(x, window: int, strides: int, padding: int):
  """`torch.nn.AvgPool2d(..., count_include_pad=False)`."""
  return nn.avg_pool(x, (window, window), (strides, strides),
                     padding=[(padding, padding)] * 2, count_include_pad=False)


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
  # torch's bins: [floor(i*n/m), ceil((i+1)*n/m)), overlapping when n % m != 0
  # and repeating pixels when n < m.
  mat = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool(x, output_size: int):
  """`torch.nn.AdaptiveAvgPool2d(output_size)` on NHWC input."""
  _, h, w, _ = x.shape
  if h == output_size and w == output_size:
    return x
  mh = jnp.asarray(_adaptive_matrix(h, output_size), x.dtype)
  mw = jnp.asarray(_adaptive_matrix(w, output_size), x.dtype)
  return jnp.einsum('oh,bhwc,pw->bopc', mh, x, mw,
                    precision='highest')


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))
