"""EfficientNet-B0 mirroring timm's `efficientnet_b0` (weights `efficientnet_b0.ra_in1k`).

Padding: timm's `efficientnet_b0` (unlike `tf_efficientnet_b0`) uses PyTorch-
style *symmetric* padding `k // 2` on every conv, including the stride-2 ones,
not TensorFlow's asymmetric 'SAME'. We do the same, so the `ra_in1k` weights
run unchanged; do not load `tf_efficientnet_b0` weights into this model.
(Checked against timm 1.0.31: `create_conv2d(padding='')` resolves to the
static symmetric padding `((stride - 1) + (k - 1)) // 2 = k // 2` for every
odd kernel here, and tests/models/test_weights.py matches its logits to 1e-4.)

BatchNorm eps is 1e-5 (timm's default for this variant; the TF ports use
1e-3), activations are SiLU, and the squeeze-excite reduction has
`round(0.25 * block input channels)` channels. Stochastic depth (timm's
`drop_path_rate`, 0 by default) is not implemented, so train mode matches
timm at drop_path_rate=0 (as in the tests). Parameter paths mirror the timm
state_dict, e.g. `blocks.1.0.se.conv_reduce.weight` is
`params/blocks/1/0/se/conv_reduce/kernel`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from danil_jax.method import ops
from danil_jax.models import layers

# (block type, repeats, kernel, stride, expansion, out channels) per stage,
# timm's decoded arch_def for efficientnet_b0 ('ds' = depthwise separable,
# 'ir' = inverted residual); every block has squeeze-excite with ratio 0.25.
B0_STAGES = (
    ('ds', 1, 3, 1, 1, 16),
    ('ir', 2, 3, 2, 6, 24),
    ('ir', 2, 5, 2, 6, 40),
    ('ir', 3, 3, 2, 6, 80),
    ('ir', 3, 5, 1, 6, 112),
    ('ir', 4, 5, 2, 6, 192),
    ('ir', 1, 3, 1, 6, 320),
)
SE_RATIO = 0.25


class SqueezeExcite(nn.Module):
  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = layers.conv(self.reduced, 1, use_bias=True, dtype=self.dtype,
                    name='conv_reduce')(s)
    s = layers.conv(x.shape[-1], 1, use_bias=True, dtype=self.dtype,
                    name='conv_expand')(nn.silu(s))
    return x * nn.sigmoid(s)


class DepthwiseSeparable(nn.Module):
  """timm `DepthwiseSeparableConv`: dw conv, BN+SiLU, SE, pw conv, BN."""
  features: int
  kernel: int
  strides: int
  se_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d, c = self.dtype, x.shape[-1]
    y = layers.conv(c, self.kernel, self.strides, self.kernel // 2, groups=c,
                    dtype=d, name='conv_dw')(x)
    y = nn.silu(layers.batch_norm(train, dtype=d, name='bn1')(y))
    y = SqueezeExcite(self.se_channels, dtype=d, name='se')(y)
    y = layers.conv(self.features, 1, dtype=d, name='conv_pw')(y)
    y = layers.batch_norm(train, dtype=d, name='bn2')(y)
    if self.strides == 1 and c == self.features:
      y = y + x
    return y


class InvertedResidual(nn.Module):
  """timm `InvertedResidual`: expand, dw conv, SE, linear projection."""
  features: int
  kernel: int
  strides: int
  expansion: int
  se_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d, c = self.dtype, x.shape[-1]
    mid = c * self.expansion
    y = layers.conv(mid, 1, dtype=d, name='conv_pw')(x)
    y = nn.silu(layers.batch_norm(train, dtype=d, name='bn1')(y))
    y = layers.conv(mid, self.kernel, self.strides, self.kernel // 2,
                    groups=mid, dtype=d, name='conv_dw')(y)
    y = nn.silu(layers.batch_norm(train, dtype=d, name='bn2')(y))
    y = SqueezeExcite(self.se_channels, dtype=d, name='se')(y)
    y = layers.conv(self.features, 1, dtype=d, name='conv_pwl')(y)
    y = layers.batch_norm(train, dtype=d, name='bn3')(y)
    if self.strides == 1 and c == self.features:
      y = y + x
    return y


class Stage(nn.Module):
  """One timm `blocks.N` Sequential; its blocks are named '0', '1', ..."""
  kind: str
  repeats: int
  kernel: int
  strides: int
  expansion: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i in range(self.repeats):
      c = x.shape[-1]
      strides = self.strides if i == 0 else 1
      # timm rounds mid * (ratio / expansion) with Python's round().
      se = round(c * self.expansion * (SE_RATIO / self.expansion))
      if self.kind == 'ds':
        block = DepthwiseSeparable(self.features, self.kernel, strides, se,
                                   dtype=self.dtype, name=str(i))
      else:
        block = InvertedResidual(self.features, self.kernel, strides,
                                 self.expansion, se, dtype=self.dtype,
                                 name=str(i))
      x = block(x, train=train)
    return x


class Blocks(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i, spec in enumerate(B0_STAGES):
      x = Stage(*spec, dtype=self.dtype, name=str(i))(x, train=train)
    return x


class EfficientNetB0(nn.Module):
  """timm efficientnet_b0; dropout needs the 'dropout' rng when `train=True`."""
  num_classes: int = 1000
  drop_rate: float = 0.2
  dtype: Any = jnp.float32
  # 'auto', 'custom' or 'stock': the conv/max-pool rules (danil_jax.method.ops).
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x = layers.conv(32, 3, 2, 1, dtype=d, name='conv_stem')(x.astype(d))
    x = nn.silu(layers.batch_norm(train, dtype=d, name='bn1')(x))
    x = Blocks(dtype=d, name='blocks')(x, train=train)
    x = layers.conv(1280, 1, dtype=d, name='conv_head')(x)
    x = nn.silu(layers.batch_norm(train, dtype=d, name='bn2')(x))
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    # float32 logits: the softmax and the DANIL input gradient need them.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier')(x)


def efficientnet_b0(num_classes: int = 1000, dtype: Any = jnp.float32,
                    drop_rate: float = 0.2) -> EfficientNetB0:
  """timm's create_model default drop_rate is 0; 0.2 is its training advice."""
  return EfficientNetB0(num_classes=num_classes, drop_rate=drop_rate,
                        dtype=dtype)
