"""Backbone registry, metadata and output shapes (no torch needed).

Shapes come from `jax.eval_shape` (tracing only): a real forward at 224-299
on CPU would cost seconds per model, and the numerics are proven against torch
in test_weights.py. The demo model, which has no torch twin, is checked
against a plain-JAX reimplementation (plain_jax_models.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import plain_jax_models
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


def test_demo_model_computes_what_its_plain_jax_twin_computes():
  """SmallResNet against plain_jax_models.small_resnet,
  written from the layer formulas with lax convolutions: logits in eval mode
  (random running statistics) and train mode, the running statistics a
  train-mode forward writes, and the parameter and input gradients of a
  loss through the train-mode forward (the first-order rules of the
  project's custom-VJP convolutions). Its first block keeps the identity
  residual, the others project it."""
  model = models.create('small_resnet', 5, widths=(8, 16, 32))
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  # Jitted as train.py does: eager init costs seconds.
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(1), x)
  # Random affine parameters and running statistics, so that no BatchNorm is
  # the identity and eval mode differs from train mode.
  rng = np.random.default_rng(2)  # numpy: an eager jax op per shape compiles
  variables = jax.tree.map(
      lambda leaf: np.asarray(leaf) + 0.3 * np.abs(
          rng.normal(size=leaf.shape)).astype(np.float32), variables)

  def flax_forward(variables, x, *, train):
    if not train:
      return model.apply(variables, x, train=False), {}
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=['batch_stats'])
    return logits, updates['batch_stats']

  def run(forward):
    def loss(params, x):
      logits, stats = forward(dict(variables, params=params), x, train=True)
      # Weights so every logit gets its own cotangent.
      return jnp.sum(logits * jnp.cos(jnp.arange(logits.size).reshape(
          logits.shape))), (logits, stats)
    (_, (logits, stats)), (g_params, g_x) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(variables['params'], x)
    eval_logits, _ = forward(variables, x, train=False)
    return dict(eval_logits=eval_logits, train_logits=logits,
                batch_stats=stats, param_grads=g_params, input_grad=g_x)

  got = jax.device_get(jax.jit(lambda: run(flax_forward))())
  want = jax.device_get(jax.jit(lambda: run(plain_jax_models.small_resnet))())
  assert np.std(want['eval_logits']) > 0.1
  assert np.abs(want['eval_logits'] - want['train_logits']).max() > 0.1
  for what in want:
    got_leaves = dict(jax.tree_util.tree_leaves_with_path(got[what]))
    want_leaves = dict(jax.tree_util.tree_leaves_with_path(want[what]))
    assert got_leaves.keys() == want_leaves.keys(), what
    for path, want_leaf in want_leaves.items():
      scale = np.linalg.norm(want_leaf)
      error = np.linalg.norm(got_leaves[path] - want_leaf) / scale
      assert scale > 0 and error <= 1e-5, (
          what, jax.tree_util.keystr(path), error)
