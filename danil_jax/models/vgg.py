"""VGG-11 mirroring `torchvision.models.vgg11` (and `vgg11_bn`).

The paper uses VGG-11 without BatchNorm; `vgg11_bn` is the same network with a
BatchNorm after every conv. Parameter paths mirror the torch state_dict, whose
Sequential indices count the ReLU/pool/dropout layers too (`features.3` is the
second conv of vgg11, `classifier.6` the last Linear).

torch flattens the 7x7x512 pooled map in (C, H, W) order before `classifier.0`;
we flatten NHWC in (H, W, C) order, so the converter permutes that one weight
matrix once (see `danil_jax.models.weights`) instead of transposing
activations here.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from danil_jax.method import ops
from danil_jax.models import layers

# torchvision's configuration 'A' (VGG-11): conv widths and 'M' max pools.
CFG_A = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')


class Features(nn.Module):
  cfg: Sequence[Any]
  batch_norm: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    index = 0  # the torch Sequential index, counting parameter-free layers
    for v in self.cfg:
      if v == 'M':
        x = layers.max_pool(x, 2, 2)
        index += 1
        continue
      x = layers.conv(v, 3, 1, 1, use_bias=True, dtype=self.dtype,
                      name=str(index))(x)
      index += 1
      if self.batch_norm:
        x = layers.batch_norm(train, dtype=self.dtype, name=str(index))(x)
        index += 1
      x = nn.relu(x)
      index += 1
    return x


class Classifier(nn.Module):
  num_classes: int
  drop_rate: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name='0')(x))
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name='3')(x))
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    # float32 logits: the softmax and the DANIL input gradient need them.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='6')(x)


class VGG(nn.Module):
  """torchvision VGG; dropout needs the 'dropout' rng when `train=True`."""
  num_classes: int = 1000
  cfg: Sequence[Any] = CFG_A
  batch_norm: bool = False
  drop_rate: float = 0.5
  dtype: Any = jnp.float32
  # 'auto', 'custom' or 'stock': the conv/max-pool rules (danil_jax.method.ops).
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train: bool):
    x = x.astype(self.dtype)
    x = Features(self.cfg, self.batch_norm, dtype=self.dtype,
                 name='features')(x, train=train)
    # Any input of at least 32x32 works: the adaptive pool repeats or merges
    # pixels into the 7x7 grid that classifier.0 expects, as torch does.
    x = layers.adaptive_avg_pool(x, 7)
    x = x.reshape(x.shape[0], -1)
    return Classifier(self.num_classes, self.drop_rate, dtype=self.dtype,
                      name='classifier')(x, train=train)


def vgg11(num_classes: int = 1000, dtype: Any = jnp.float32,
          drop_rate: float = 0.5) -> VGG:
  return VGG(num_classes=num_classes, batch_norm=False, drop_rate=drop_rate,
             dtype=dtype)


def vgg11_bn(num_classes: int = 1000, dtype: Any = jnp.float32,
             drop_rate: float = 0.5) -> VGG:
  return VGG(num_classes=num_classes, batch_norm=True, drop_rate=drop_rate,
             dtype=dtype)
