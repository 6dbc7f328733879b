"""ResNet-50 mirroring `torchvision.models.resnet50` (v1.5).

v1.5 puts the stride of a downsampling bottleneck on its 3x3 conv (conv2), not
on the first 1x1 conv as in the original paper; torchvision's IMAGENET1K_V1
weights were trained that way. Parameter paths mirror the torch state_dict:
`layer2.0.downsample.1.running_mean` is `batch_stats/layer2/0/downsample/1/mean`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from danil_jax.method import ops
from danil_jax.models import layers


class Downsample(nn.Module):
  """torchvision's `downsample` Sequential: 1x1 strided conv '0' + BN '1'."""
  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = layers.conv(self.features, 1, self.strides, dtype=self.dtype,
                    name='0')(x)
    return layers.batch_norm(train, dtype=self.dtype, name='1')(x)


class Bottleneck(nn.Module):
  width: int
  strides: int = 1
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_features = self.width * self.expansion
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, name=name)
    y = layers.conv(self.width, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = layers.conv(self.width, 3, self.strides, 1, dtype=self.dtype,
                    name='conv2')(y)
    y = nn.relu(bn('bn2')(y))
    y = layers.conv(out_features, 1, dtype=self.dtype, name='conv3')(y)
    y = bn('bn3')(y)
    if self.strides != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.strides, dtype=self.dtype,
                     name='downsample')(x, train=train)
    return nn.relu(x + y)


class Stage(nn.Module):
  """A torchvision `layerN` Sequential of bottlenecks named '0', '1', ..."""
  width: int
  blocks: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i in range(self.blocks):
      x = Bottleneck(self.width, self.strides if i == 0 else 1,
                     dtype=self.dtype, name=str(i))(x, train=train)
    return x


class ResNet(nn.Module):
  """torchvision ResNet with bottleneck blocks; `stage_sizes` picks the depth."""
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32
  # 'auto', 'custom' or 'stock': the conv/max-pool rules (danil_jax.method.ops).
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train: bool):
    x = x.astype(self.dtype)
    x = layers.conv(64, 7, 2, 3, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name='bn1')(x))
    x = layers.max_pool(x, 3, 2, 1)
    for i, blocks in enumerate(self.stage_sizes):
      x = Stage(64 * 2**i, blocks, 1 if i == 0 else 2, dtype=self.dtype,
                name=f'layer{i + 1}')(x, train=train)
    x = layers.global_avg_pool(x)
    # float32 logits: the softmax and the DANIL input gradient need them.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(x)


def resnet50(num_classes: int = 1000, dtype: Any = jnp.float32) -> ResNet:
  return ResNet(num_classes=num_classes, stage_sizes=(3, 4, 6, 3),
                dtype=dtype)
