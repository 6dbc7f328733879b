"""Backbone registry, metadata and output shapes (no torch needed).

Shapes come from `jax.eval_shape` (tracing only): a real forward at 224-299
on CPU would cost seconds per model, and the numerics are proven against torch
in test_weights.py.
"""

import jax
import jax.numpy as jnp
import pytest

from danil_jax import models

BACKBONES = ('resnet50', 'vgg11', 'vgg11_bn', 'inception_v4',
             'efficientnet_b0')
# The smallest input each architecture accepts.
SMALL = {'resnet50': 64, 'vgg11': 64, 'vgg11_bn': 64, 'inception_v4': 75,
         'efficientnet_b0': 64}


def _shapes(name, size, *, num_classes=7, train=False, **kw):
  model = models.create(name, num_classes, **kw)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

  def run(x):
    variables = model.init({'params': jax.random.key(0)}, x, train=False)
    if train:
      return model.apply(variables, x, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(1)})[0], variables
    return model.apply(variables, x, train=False), variables

  return jax.eval_shape(run, x)


def test_registry_lists_every_backbone():
  assert set(BACKBONES) <= set(models.names())
  with pytest.raises(ValueError, match='unknown model'):
    models.info('resnet5')


@pytest.mark.parametrize('name,size,reference', [
    ('resnet50', 224, 'torchvision.models.resnet50'),
    ('vgg11', 224, 'torchvision.models.vgg11'),
    ('vgg11_bn', 224, 'torchvision.models.vgg11_bn'),
    ('inception_v4', 299, "timm.create_model('inception_v4')"),
    ('efficientnet_b0', 224, "timm.create_model('efficientnet_b0')"),
])
def test_metadata(name, size, reference):
  info = models.info(name)
  assert info.input_size == size
  assert info.torch_reference == reference
  expected_mean = (0.5,) * 3 if name == 'inception_v4' else (0.485, 0.456,
                                                             0.406)
  assert info.mean == expected_mean
  assert len(info.std) == 3 and info.head


@pytest.mark.parametrize('name', BACKBONES)
def test_logits_shape_at_default_size(name):
  logits, variables = _shapes(name, models.info(name).input_size)
  assert logits.shape == (1, 7) and logits.dtype == jnp.float32
  # The classifier head named in the metadata is where num_classes lives.
  node = variables['params']
  for part in models.info(name).head[0].split('/'):
    node = node[part]
  assert node['kernel'].shape[-1] == 7 and node['bias'].shape == (7,)


# torchvision/timm parameter counts (weights and biases, no BN statistics).
TORCH_PARAMETER_COUNTS = {
    'resnet50': 25_557_032, 'vgg11': 132_863_336, 'vgg11_bn': 132_868_840,
    'inception_v4': 42_679_816, 'efficientnet_b0': 5_288_548}


@pytest.mark.parametrize('name', BACKBONES)
def test_small_size_in_train_mode_and_parameter_count(name):
  logits, variables = _shapes(name, SMALL[name], num_classes=1000,
                              train=True)
  assert logits.shape == (1, 1000)
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  assert count == TORCH_PARAMETER_COUNTS[name]


@pytest.mark.parametrize('name,size', [('resnet50', 97), ('vgg11', 33),
                                       ('inception_v4', 76),
                                       ('efficientnet_b0', 65)])
def test_odd_sizes(name, size):
  logits, _ = _shapes(name, size)
  assert logits.shape == (1, 7)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  logits, variables = _shapes('resnet50', 64, dtype=jnp.bfloat16)
  assert logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree.leaves(variables))
