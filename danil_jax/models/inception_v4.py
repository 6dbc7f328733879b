"""Inception-v4 mirroring timm's `inception_v4` (weights `inception_v4.tf_in1k`).

Every conv is timm's `ConvNormAct`: a bias-free conv ('conv') and a BatchNorm
with eps 1e-3 followed by ReLU ('bn'), the TF-ported weights' setting. Pools
are unpadded 3x3/2 max pools, and the 3x3/1 average pools of the Inception
blocks exclude their zero padding from the mean (`count_include_pad=False`).
Parameter paths mirror the timm state_dict, e.g. `features.10.branch1.2.bn.weight`
is `params/features/10/branch1/2/bn/scale`. Needs inputs of at least 75x75.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from danil_jax.method import ops
from danil_jax.models import layers

BN_EPS = 1e-3


class ConvBnAct(nn.Module):
  features: int
  kernel_size: int | Sequence[int]
  strides: int = 1
  padding: int | Sequence[int] = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = layers.conv(self.features, self.kernel_size, self.strides,
                    self.padding, dtype=self.dtype, name='conv')(x)
    x = layers.batch_norm(train, eps=BN_EPS, dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class Chain(nn.Module):
  """A torch Sequential of ConvNormAct layers named '0', '1', ...

  Each spec is (features, kernel, stride, padding).
  """
  specs: Sequence[tuple[int, Any, int, Any]]
  pool_first: bool = False  # timm's AvgPool2d(3, 1, 1) before the convs
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    offset = 0
    if self.pool_first:
      x = layers.avg_pool_exclude_pad(x, 3, 1, 1)
      offset = 1
    for i, (f, k, s, p) in enumerate(self.specs):
      x = ConvBnAct(f, k, s, p, dtype=self.dtype,
                    name=str(i + offset))(x, train=train)
    return x


class Mixed3a(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x0 = layers.max_pool(x, 3, 2)
    x1 = ConvBnAct(96, 3, 2, dtype=self.dtype, name='conv')(x, train=train)
    return jnp.concatenate([x0, x1], -1)


class Mixed4a(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x0 = Chain([(64, 1, 1, 0), (96, 3, 1, 0)], dtype=d,
               name='branch0')(x, train=train)
    x1 = Chain([(64, 1, 1, 0), (64, (1, 7), 1, (0, 3)),
                (64, (7, 1), 1, (3, 0)), (96, 3, 1, 0)], dtype=d,
               name='branch1')(x, train=train)
    return jnp.concatenate([x0, x1], -1)


class Mixed5a(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x0 = ConvBnAct(192, 3, 2, dtype=self.dtype, name='conv')(x, train=train)
    x1 = layers.max_pool(x, 3, 2)
    return jnp.concatenate([x0, x1], -1)


class InceptionA(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x0 = ConvBnAct(96, 1, dtype=d, name='branch0')(x, train=train)
    x1 = Chain([(64, 1, 1, 0), (96, 3, 1, 1)], dtype=d,
               name='branch1')(x, train=train)
    x2 = Chain([(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)], dtype=d,
               name='branch2')(x, train=train)
    x3 = Chain([(96, 1, 1, 0)], pool_first=True, dtype=d,
               name='branch3')(x, train=train)
    return jnp.concatenate([x0, x1, x2, x3], -1)


class ReductionA(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x0 = ConvBnAct(384, 3, 2, dtype=d, name='branch0')(x, train=train)
    x1 = Chain([(192, 1, 1, 0), (224, 3, 1, 1), (256, 3, 2, 0)], dtype=d,
               name='branch1')(x, train=train)
    x2 = layers.max_pool(x, 3, 2)
    return jnp.concatenate([x0, x1, x2], -1)


class InceptionB(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x0 = ConvBnAct(384, 1, dtype=d, name='branch0')(x, train=train)
    x1 = Chain([(192, 1, 1, 0), (224, (1, 7), 1, (0, 3)),
                (256, (7, 1), 1, (3, 0))], dtype=d,
               name='branch1')(x, train=train)
    x2 = Chain([(192, 1, 1, 0), (192, (7, 1), 1, (3, 0)),
                (224, (1, 7), 1, (0, 3)), (224, (7, 1), 1, (3, 0)),
                (256, (1, 7), 1, (0, 3))], dtype=d,
               name='branch2')(x, train=train)
    x3 = Chain([(128, 1, 1, 0)], pool_first=True, dtype=d,
               name='branch3')(x, train=train)
    return jnp.concatenate([x0, x1, x2, x3], -1)


class ReductionB(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    x0 = Chain([(192, 1, 1, 0), (192, 3, 2, 0)], dtype=d,
               name='branch0')(x, train=train)
    x1 = Chain([(256, 1, 1, 0), (256, (1, 7), 1, (0, 3)),
                (320, (7, 1), 1, (3, 0)), (320, 3, 2, 0)], dtype=d,
               name='branch1')(x, train=train)
    x2 = layers.max_pool(x, 3, 2)
    return jnp.concatenate([x0, x1, x2], -1)


class InceptionC(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    def cba(f, k, p, name, inp):
      return ConvBnAct(f, k, 1, p, dtype=self.dtype, name=name)(
          inp, train=train)

    x0 = cba(256, 1, 0, 'branch0', x)
    x1_0 = cba(384, 1, 0, 'branch1_0', x)
    x1 = jnp.concatenate([cba(256, (1, 3), (0, 1), 'branch1_1a', x1_0),
                          cba(256, (3, 1), (1, 0), 'branch1_1b', x1_0)], -1)
    x2 = cba(384, 1, 0, 'branch2_0', x)
    x2 = cba(448, (3, 1), (1, 0), 'branch2_1', x2)
    x2 = cba(512, (1, 3), (0, 1), 'branch2_2', x2)
    x2 = jnp.concatenate([cba(256, (1, 3), (0, 1), 'branch2_3a', x2),
                          cba(256, (3, 1), (1, 0), 'branch2_3b', x2)], -1)
    x3 = Chain([(256, 1, 1, 0)], pool_first=True, dtype=self.dtype,
               name='branch3')(x, train=train)
    return jnp.concatenate([x0, x1, x2, x3], -1)


class Features(nn.Module):
  """timm's `features` Sequential: stem, then 4 A, 7 B and 3 C blocks."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = self.dtype
    blocks = [
        lambda n: ConvBnAct(32, 3, 2, dtype=d, name=n),
        lambda n: ConvBnAct(32, 3, 1, dtype=d, name=n),
        lambda n: ConvBnAct(64, 3, 1, 1, dtype=d, name=n),
        lambda n: Mixed3a(dtype=d, name=n),
        lambda n: Mixed4a(dtype=d, name=n),
        lambda n: Mixed5a(dtype=d, name=n),
    ]
    blocks += [lambda n: InceptionA(dtype=d, name=n)] * 4
    blocks += [lambda n: ReductionA(dtype=d, name=n)]
    blocks += [lambda n: InceptionB(dtype=d, name=n)] * 7
    blocks += [lambda n: ReductionB(dtype=d, name=n)]
    blocks += [lambda n: InceptionC(dtype=d, name=n)] * 3
    for i, make in enumerate(blocks):
      x = make(str(i))(x, train=train)
    return x


class InceptionV4(nn.Module):
  """timm InceptionV4; dropout needs the 'dropout' rng when `train=True`."""
  num_classes: int = 1000
  drop_rate: float = 0.2
  dtype: Any = jnp.float32
  # 'auto', 'custom' or 'stock': the conv/max-pool rules (danil_jax.method.ops).
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train: bool):
    x = Features(dtype=self.dtype, name='features')(
        x.astype(self.dtype), train=train)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    # float32 logits: the softmax and the DANIL input gradient need them.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='last_linear')(x)


def inception_v4(num_classes: int = 1000, dtype: Any = jnp.float32,
                 drop_rate: float = 0.2) -> InceptionV4:
  """timm's default drop_rate is 0; 0.2 is the original TF Inception-v4's."""
  return InceptionV4(num_classes=num_classes, drop_rate=drop_rate, dtype=dtype)
