"""Plain-JAX twins of the test models, written from the layer formulas.

Shared by test_models.py (the demo model's numbers) and
test_reference_training.py (the reference training loop). Nothing here calls
Flax or danil_jax: convolutions are `jax.lax.conv_general_dilated` (not the
project's custom-VJP `ops.conv_general_dilated`), BatchNorm is written out,
and the architecture is spelled out again from its description. A model's
variables are the Flax tree ({'params': ..., 'batch_stats': ...}) read as
nested dicts, so both sides start from the same numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def conv(x, kernel, stride, padding):
  """NHWC x HWIO convolution with symmetric zero padding."""
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)


def batch_norm(x, params, stats, *, train, momentum, eps, unbiased_running):
  """BatchNorm over N, H, W; returns (y, new running statistics).

  Train mode normalises with the batch mean and biased variance; the running
  statistics become momentum * old + (1 - momentum) * batch (Flax's sense of
  momentum: the weight of the old value), with the batch variance made
  unbiased (n / (n - 1), n = N*H*W) when `unbiased_running` (torch's
  convention, models/layers.py) and left biased otherwise (flax.linen's
  nn.BatchNorm). Eval mode normalises with the running statistics.
  """
  if train:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    n = int(np.prod([x.shape[a] for a in axes]))
    running_var = var * n / (n - 1) if unbiased_running else var
    new_stats = dict(
        mean=momentum * stats['mean'] + (1 - momentum) * mean,
        var=momentum * stats['var'] + (1 - momentum) * running_var)
  else:
    mean, var, new_stats = stats['mean'], stats['var'], stats
  y = (x - mean) / jnp.sqrt(var + eps) * params['scale'] + params['bias']
  return y, new_stats


def small_resnet(variables, x, *, train, momentum=0.9, eps=1e-5):
  """models/small_resnet.py's SmallResNet, from its description.

  Stem: 3x3 conv (stride 1, no bias), BN, ReLU. Then per stage i (widths
  from the stem's and the blocks' kernels) basic blocks, the first of every
  stage but the first with stride 2: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
  the input (through a 1x1 strided conv and BN where the shape changes), ReLU.
  Global average pool, dense head. BN keeps the biased variance (Flax's
  nn.BatchNorm), momentum 0.9, eps 1e-5.

  Returns (logits, new batch_stats).
  """
  params, stats = variables['params'], variables['batch_stats']
  new_stats = {}

  def bn(x, params, stats):
    return batch_norm(x, params, stats, train=train, momentum=momentum,
                      eps=eps, unbiased_running=False)

  h = conv(x, params['stem_conv']['kernel'], 1, 1)
  h, new_stats['stem_bn'] = bn(h, params['stem_bn'], stats['stem_bn'])
  h = jax.nn.relu(h)
  blocks = sorted((k for k in params if k.startswith('stage')),
                  key=lambda k: tuple(int(s) for s in k[5:].split('_block')))
  for name in blocks:
    stage, block = (int(s) for s in name[5:].split('_block'))
    stride = 2 if stage > 1 and block == 1 else 1
    p, s, ns = params[name], stats[name], {}
    y = conv(h, p['conv1']['kernel'], stride, 1)
    y, ns['bn1'] = bn(y, p['bn1'], s['bn1'])
    y = conv(jax.nn.relu(y), p['conv2']['kernel'], 1, 1)
    y, ns['bn2'] = bn(y, p['bn2'], s['bn2'])
    if stride != 1 or h.shape[-1] != y.shape[-1]:
      residual = conv(h, p['downsample_conv']['kernel'], stride, 0)
      residual, ns['downsample_bn'] = bn(residual, p['downsample_bn'],
                                         s['downsample_bn'])
    else:
      assert 'downsample_conv' not in p, name
      residual = h
    h = jax.nn.relu(residual + y)
    new_stats[name] = ns
  h = jnp.mean(h, axis=(1, 2))
  logits = jnp.dot(h, params['head']['kernel'], precision=HIGHEST)
  return logits + params['head']['bias'], new_stats


def torch_bn_net(variables, x, *, train):
  """TorchBNNet in test_reference_training.py: 3x3 conv (stride 2, padding
  1, no bias), torch-convention BN (unbiased running variance, torch momentum
  0.1 = Flax 0.9), ReLU, global average pool, dense head."""
  params, stats = variables['params'], variables['batch_stats']
  h = conv(x, params['conv']['kernel'], 2, 1)
  h, bn_stats = batch_norm(h, params['bn'], stats['bn'], train=train,
                           momentum=0.9, eps=1e-5, unbiased_running=True)
  h = jnp.mean(jax.nn.relu(h), axis=(1, 2))
  logits = jnp.dot(h, params['fc']['kernel'], precision=HIGHEST)
  return logits + params['fc']['bias'], dict(bn=bn_stats)
