"""The trainer's steps against a training loop written independently here.

The project's public training path (a config from configs/, then
`train_step.make_optimizer`, `train_step.create_train_state` and
`train_step.make_train_step(config)` jitted as train.py does) runs N steps of Base,
OHEM and DANIL on the demo model. The same batches go through a reference
written from the formulas in this file: a plain-JAX twin of the model
(plain_jax_models.py, its own BatchNorm and running-statistics update), its
own cross-entropy, OHEM and DANIL with the two input gradients of Algorithm 1
taken separately, and SGD with momentum, Nesterov, weight decay and the
warmup/cosine schedules as torch.optim.SGD and the schedules' formulas
define them (no optax). Parameters, BatchNorm statistics and optimiser state
must agree per leaf after 6 steps, each batch with misclassified samples.

Two BatchNorm conventions are covered: the demo model's Flax nn.BatchNorm
keeps the biased batch variance in its running average, the ImageNet
backbones' layers.BatchNorm the unbiased one (torch's); TorchBNNet, a conv,
that BatchNorm and a head, runs the second through the same path.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import plain_jax_models
import pytest

from danil_jax.configs import demo
from danil_jax import models
from danil_jax.models import layers
from danil_jax.trainer import train_step

NUM_STEPS = 6
BATCH, SIZE, NUM_CLASSES = 8, 16, 4
STEPS_PER_EPOCH, NUM_EPOCHS = 2, 3  # 6 steps: the cosine runs to its end
RTOL = 1e-5


class TorchBNNet(nn.Module):
  """A conv, the torch-convention BatchNorm the ImageNet backbones use
  (unbiased running variance, models/layers.py) and a head."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.relu(layers.batch_norm(train, name='bn')(
        layers.conv(8, 3, 2, 1, name='conv')(x)))
    return nn.Dense(NUM_CLASSES, name='fc')(layers.global_avg_pool(x))


MODELS = {
    'small_resnet': (lambda: models.create('small_resnet', NUM_CLASSES),
                     plain_jax_models.small_resnet),
    'torch_bn_net': (TorchBNNet, plain_jax_models.torch_bn_net),
}

OPTIMISERS = {
    'momentum': dict(learning_rate=0.05, momentum=0.9, nesterov=False,
                     weight_decay=0.0, schedule='constant', warmup_epochs=0.0),
    'nesterov_decay_warmup_cosine': dict(
        learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2,
        schedule='cosine', warmup_epochs=1.0),
    'plain_warmup_constant': dict(
        learning_rate=0.05, momentum=0.0, nesterov=False, weight_decay=1e-2,
        schedule='constant', warmup_epochs=1.5),
}


def make_config(method, optimiser):
  config = demo.get_config()
  config.method = method
  config.dataset.num_classes = NUM_CLASSES
  config.danil.lam = 1.0  # Ld's gradient as large as L+c's: a real test
  config.danil.eps = 1e-4
  config.danil.reduction = 'per_image'  # the reading reference_training has
  config.ohem.keep_ratio = 0.6  # keeps ceil(4.8) = 5 of 8
  for key, value in OPTIMISERS[optimiser].items():
    config.optim[key] = value
  config.lock()
  return config


def make_batches(seed):
  rng = np.random.default_rng(seed)
  return [dict(image=rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(
      np.float32), label=rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32))
          for _ in range(NUM_STEPS)]


def init(model, images):
  # Jitted as train.py does: eager init costs seconds.
  return jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), images)


# ------------------------------------------------------- the reference --


def cross_entropy(logits, labels):
  """Per-sample -log softmax(logits)[label], log-sum-exp shifted by the max."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  log_norm = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1)) + top[:, 0]
  return log_norm - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]


def reference_terms(params, batch_stats, batch, *, forward, eps, with_ld=True):
  """Per-sample CE, Ld (Eq. 5), misclassified mask and new batch_stats."""
  images, labels = batch['image'], batch['label']

  def logits_fn(x):
    return forward(dict(params=params, batch_stats=batch_stats), x,
                   train=True)

  logits, new_stats = logits_fn(images)
  ce = cross_entropy(logits, labels)
  predicted = jax.lax.stop_gradient(jnp.argmax(logits, -1))
  misclassified = (predicted != labels).astype(jnp.float32)
  if not with_ld:
    return dict(ce=ce, misclassified=misclassified, batch_stats=new_stats)
  # Algorithm 1: A+ and A- as two separate input gradients (Eq. 2-4), of the
  # losses summed over the batch so image i's map is its slice (and train-
  # mode BatchNorm couples the images); y- is the constant prediction.
  summed = lambda target: lambda x: jnp.sum(
      cross_entropy(logits_fn(x)[0], target))
  a_pos = jax.grad(summed(labels))(images)
  a_neg = jax.grad(summed(predicted))(images)
  distance = jnp.sum(jnp.square(a_pos - a_neg), axis=(1, 2, 3))
  ld = jnp.mean(misclassified * (1.0 / (distance + eps)))
  return dict(ce=ce, ld=ld, misclassified=misclassified,
              batch_stats=new_stats)


def reference_loss(params, batch_stats, batch, *, forward, method, lam, eps,
                   keep_ratio):
  """Returns (loss, (new batch_stats, per-sample misclassified))."""
  terms = reference_terms(params, batch_stats, batch, forward=forward,
                          eps=eps, with_ld=method == 'danil')
  ce = terms['ce']
  if method == 'base':
    loss = jnp.mean(ce)
  elif method == 'ohem':
    # The ceil(keep_ratio * B) largest losses, chosen without a gradient.
    k = math.ceil(keep_ratio * len(ce))
    order = jnp.argsort(-jax.lax.stop_gradient(ce))
    loss = jnp.sum(ce[order[:k]]) / k
  else:
    loss = jnp.mean(ce) + lam * terms['ld']  # Eq. 6
  return loss, (terms['batch_stats'], terms['misclassified'])


def learning_rate(step, optim):
  """The schedule at 0-based update `step`, from its formula."""
  peak = optim.learning_rate
  warmup = int(optim.warmup_epochs * STEPS_PER_EPOCH)
  total = STEPS_PER_EPOCH * NUM_EPOCHS
  if step < warmup:  # linear from 0
    return peak * step / warmup
  if optim.schedule == 'constant':
    return peak
  # Cosine from the peak at the end of warmup to 0 at `total`.
  progress = min(step - warmup, total - warmup) / (total - warmup)
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def reference_training(variables, batches, config, forward):
  """torch.optim.SGD's update, float64 on the host: with g' = g + wd * p,
  buf = momentum * buf + g' (buf = g' at the first step), d = g' +
  momentum * buf (Nesterov) or buf, p = p - lr * d."""
  optim = config.optim
  loss_and_grad = jax.jit(jax.value_and_grad(functools.partial(
      reference_loss, forward=forward, method=config.method,
      lam=config.danil.lam, eps=config.danil.eps,
      keep_ratio=config.ohem.keep_ratio), has_aux=True))
  to64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  params, batch_stats = to64(variables['params']), variables['batch_stats']
  buf = jax.tree.map(np.zeros_like, params)
  losses, misclassified = [], []
  for step, batch in enumerate(batches):
    as32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    (loss, (batch_stats, wrong)), grads = loss_and_grad(as32, batch_stats,
                                                        batch)
    losses.append(float(loss))
    misclassified.append(float(np.mean(wrong)))
    grads = jax.tree.map(lambda g, p: np.asarray(g, np.float64)
                         + optim.weight_decay * p, grads, params)
    if optim.momentum:
      buf = jax.tree.map(lambda b, g: optim.momentum * b + g, buf, grads)
      if optim.nesterov:
        direction = jax.tree.map(lambda g, b: g + optim.momentum * b, grads,
                                 buf)
      else:
        direction = buf
    else:
      direction = grads
    lr = learning_rate(step, optim)
    params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
  return dict(params=params, batch_stats=jax.device_get(batch_stats),
              trace=buf if optim.momentum else None, losses=losses,
              misclassified=misclassified)


# --------------------------------------------------------- the trainer --


def trainer_training(model, variables, batches, config):
  """The public path, as train.py builds and calls it."""
  tx = train_step.make_optimizer(config.optim, STEPS_PER_EPOCH, NUM_EPOCHS)
  state = train_step.create_train_state(model, variables, tx,
                                   jax.random.PRNGKey(config.seed))
  step = jax.jit(train_step.make_train_step(config))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return state, losses


def assert_trees_close(got, want, what, rtol=RTOL):
  """Same tree paths; every leaf within rtol of it, relative to its norm."""
  got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
  want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
  assert got_leaves.keys() == want_leaves.keys(), what
  for path, want_leaf in want_leaves.items():
    got_leaf = np.asarray(got_leaves[path], np.float64)
    want_leaf = np.asarray(want_leaf, np.float64)
    assert got_leaf.shape == want_leaf.shape, (what, path)
    scale = np.linalg.norm(want_leaf)
    assert scale > 0, (what, path)
    error = np.linalg.norm(got_leaf - want_leaf) / scale
    assert error <= rtol, (
        f'{what}{jax.tree_util.keystr(path)}: relative error {error:.3g}')


@pytest.mark.parametrize('method,optimiser,model_name', [
    ('base', 'momentum', 'small_resnet'),
    ('ohem', 'nesterov_decay_warmup_cosine', 'small_resnet'),
    ('danil', 'nesterov_decay_warmup_cosine', 'small_resnet'),
    ('danil', 'momentum', 'torch_bn_net'),
    ('base', 'plain_warmup_constant', 'torch_bn_net'),
])
def test_trainer_equals_the_reference_training_loop(method, optimiser,
                                                    model_name):
  config = make_config(method, optimiser)
  build, forward = MODELS[model_name]
  model = build()
  batches = make_batches(seed=1)
  variables = init(model, batches[0]['image'])
  state, losses = trainer_training(model, variables, batches, config)
  want = reference_training(variables, batches, config, forward)

  # Not vacuous: every batch has misclassified samples (DANIL's term acts),
  # some have correct ones too (its mask and OHEM's choice matter).
  assert min(want['misclassified']) > 0, want['misclassified']
  assert min(want['misclassified']) < 1, want['misclassified']
  np.testing.assert_allclose(losses, want['losses'], rtol=RTOL)
  assert int(state.step) == NUM_STEPS
  assert_trees_close(state.params, want['params'], 'params')
  assert_trees_close(state.batch_stats, want['batch_stats'], 'batch_stats')
  assert int(optax.tree_utils.tree_get(state.opt_state, 'count')) == NUM_STEPS
  if want['trace'] is None:
    assert optax.tree_utils.tree_get(state.opt_state, 'trace') is None
  else:
    assert_trees_close(optax.tree_utils.tree_get(state.opt_state, 'trace'),
                       want['trace'], 'momentum')


def test_distraction_gradient_share_equals_two_separate_gradients():
  """train_step.gradient_share against g_ce and g_d taken as two
  separate parameter gradients of the reference L+c and lam * Ld."""
  config = make_config('danil', 'momentum')
  build, forward = MODELS['small_resnet']
  model = build()
  batch = make_batches(seed=2)[0]
  variables = init(model, batch['image'])
  tx = train_step.make_optimizer(config.optim, STEPS_PER_EPOCH, NUM_EPOCHS)
  state = train_step.create_train_state(model, variables, tx,
                                   jax.random.PRNGKey(config.seed))
  lam, eps = config.danil.lam, config.danil.eps
  got = jax.jit(functools.partial(
      train_step.gradient_share, lam=lam, eps=eps, reduction='per_image',
      misclassified_only=False, map_dtype='compute'))(state, batch)

  def term(params, which):
    terms = reference_terms(params, variables['batch_stats'], batch,
                            forward=forward, eps=eps, with_ld=which == 'd')
    return jnp.mean(terms['ce']) if which == 'ce' else lam * terms['ld']

  g_ce = jax.jit(jax.grad(functools.partial(term, which='ce')))(
      variables['params'])
  g_d = jax.jit(jax.grad(functools.partial(term, which='d')))(
      variables['params'])
  norm = lambda tree: np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64)))
                                  for a in jax.tree.leaves(tree)))
  want_share = norm(g_d) / norm(jax.tree.map(np.add, g_ce, g_d))
  want_ratio = norm(g_d) / norm(g_ce)
  assert want_ratio > 0.1  # the term does move the gradient at this lam
  np.testing.assert_allclose(got['distraction_grad_share'], want_share,
                             rtol=1e-5)
  np.testing.assert_allclose(got['distraction_grad_ratio'], want_ratio,
                             rtol=1e-5)
