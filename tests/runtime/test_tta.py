"""Test-time augmentation in the eval step against numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from danil_jax.evaluation import scoring as evaluation
from danil_jax.runtime import multihost
from danil_jax.trainer import train_step
from danil_jax.runtime import tta


class _Conv(nn.Module):
  """Not invariant to flips or rotations: position-dependent Dense head."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = jnp.tanh(nn.Conv(4, (3, 3))(x))
    return nn.Dense(5, kernel_init=nn.initializers.normal(0.5))(
        x.reshape(x.shape[0], -1))


def _state(size=8):
  model = _Conv()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  return train_step.create_train_state(model, variables, optax.sgd(0.1),
                                  jax.random.PRNGKey(1))


def _batch(images, labels):
  return dict(image=images, label=labels,
              mask=np.ones(len(labels), bool))


def _numpy_copies(image, mode):
  """Each transformed copy of one HWC image, written with numpy."""
  if mode == 'flips':
    return [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
  return [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('mode', ['flips', 'flips_rot90'])
def test_tta_averages_probabilities_over_the_numpy_copies(mode):
  state = _state()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0], np.int32)
  mesh = multihost.make_mesh()
  step = evaluation.jit_eval_step(mesh, mode)
  out = jax.device_get(step(state, multihost.global_batch(
      _batch(images, labels), mesh)))

  apply = jax.jit(lambda x: state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, x))
  reference = []
  for image in images:
    copies = np.stack(_numpy_copies(image, mode))
    assert len(copies) == tta.MODES[mode]
    probabilities = _softmax(np.asarray(apply(copies), np.float64))
    reference.append(probabilities.mean(0))
  reference = np.stack(reference)
  np.testing.assert_allclose(out['probabilities'], reference, atol=1e-6)
  np.testing.assert_allclose(np.exp(out['log_probabilities']), reference,
                             atol=1e-6)
  np.testing.assert_allclose(
      out['ce_sum'], -np.sum(np.log(reference[np.arange(6), labels])),
      rtol=1e-5)
  # Averaging the logits instead gives another answer: the test can tell.
  logits_mean = [_softmax(np.asarray(apply(np.stack(_numpy_copies(im, mode))),
                                     np.float64).mean(0)) for im in images]
  assert np.abs(np.stack(logits_mean) - reference).max() > 1e-3
  # The copies differ: TTA changes the probabilities.
  plain = jax.device_get(evaluation.jit_eval_step(mesh)(
      state, multihost.global_batch(_batch(images, labels), mesh)))
  assert np.abs(plain['probabilities'] - reference).max() > 1e-3


@pytest.mark.parametrize('mode', ['flips', 'flips_rot90'])
def test_tta_on_a_symmetric_image_equals_none(mode):
  rng = np.random.default_rng(1)
  base = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  # Symmetrised over the copies' group (flips: {id, lr, ud, both}; D4).
  images = np.stack([np.mean(_numpy_copies(b, mode), axis=0) for b in base])
  for image in images:
    for copy in _numpy_copies(image, mode):
      np.testing.assert_allclose(copy, image, atol=1e-6)
  state, labels = _state(), np.array([0, 1, 2], np.int32)
  mesh = multihost.make_mesh()
  batch = multihost.global_batch(_batch(images, labels), mesh)
  augmented = jax.device_get(evaluation.jit_eval_step(mesh, mode)(state,
                                                                  batch))
  plain = jax.device_get(evaluation.jit_eval_step(mesh)(state, batch))
  np.testing.assert_allclose(augmented['probabilities'],
                             plain['probabilities'], atol=1e-6)
  np.testing.assert_allclose(augmented['ce_sum'], plain['ce_sum'], rtol=1e-5)


def test_expand_keeps_each_images_copies_together():
  images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  expanded = np.asarray(tta.expand(images, 'flips_rot90'))
  assert expanded.shape == (16, 4, 4, 1)
  for b in range(2):
    copies = _numpy_copies(np.asarray(images[b]), 'flips_rot90')
    got = {expanded[b * 8 + i].tobytes() for i in range(8)}
    assert got == {c.tobytes() for c in copies} and len(got) == 8
    np.testing.assert_array_equal(expanded[b * 8], images[b])


def test_bad_tta_and_non_square_images_are_named():
  with pytest.raises(ValueError, match="tta must be one of.*'flip'"):
    tta.expand(jnp.zeros((1, 4, 4, 3)), 'flip')
  with pytest.raises(ValueError, match='square images, got 4x6'):
    tta.expand(jnp.zeros((1, 4, 6, 3)), 'flips_rot90')
