"""A small ResNet-style network for the demo and the tests (no torch twin).

Three stages of basic residual blocks with BatchNorm, global average pool and a
dense head: cheap enough to train on a laptop CPU in minutes, yet with the
parts (strided convs, BatchNorm, residuals) whose double backprop DANIL needs.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from danil_jax.method import ops


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=self.dtype, name=name)
    # ops.conv_general_dilated: same values, with conv rules whose own
    # derivatives stay fast (DANIL's double backprop; danil_jax/method/ops.py).
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
        dtype=self.dtype, conv_general_dilated=ops.conv_general_dilated,
        name=name)
    residual = x
    y = conv(self.features, 3, self.strides, 'conv1')(x)
    y = nn.relu(norm('bn1')(y))
    y = conv(self.features, 3, 1, 'conv2')(y)
    y = norm('bn2')(y)
    if residual.shape != y.shape:
      residual = conv(self.features, 1, self.strides, 'downsample_conv')(x)
      residual = norm('downsample_bn')(residual)
    return nn.relu(residual + y)


class SmallResNet(nn.Module):
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 1
  dtype: Any = jnp.float32
  # 'auto', 'custom' or 'stock': the conv/max-pool rules (danil_jax.method.ops).
  conv_rules: str = 'auto'

  @nn.compact
  @ops.with_model_rules
  def __call__(self, x, *, train: bool):
    x = x.astype(self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), padding=[(1, 1)] * 2, use_bias=False,
                dtype=self.dtype, conv_general_dilated=ops.conv_general_dilated,
                name='stem_conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     dtype=self.dtype, name='stem_bn')(x)
    x = nn.relu(x)
    for i, width in enumerate(self.widths):
      for j in range(self.blocks_per_stage):
        strides = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(width, strides, dtype=self.dtype,
                       name=f'stage{i + 1}_block{j + 1}')(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    # Logits in float32 so the softmax and the DANIL input gradient are exact.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(x)
