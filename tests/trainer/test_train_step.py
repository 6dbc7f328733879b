"""Tests for danil_jax/trainer/train_step.py: the skip of DANIL's double backprop."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from danil_jax.models import layers
from danil_jax.trainer import train_step


class _Net(nn.Module):
  """Conv, BN, dropout and a head: every kind of state a step touches."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.relu(layers.batch_norm(train, name='bn')(
        layers.conv(8, 3, 2, 1, name='conv')(x)))
    x = nn.Dropout(0.3, deterministic=not train)(layers.global_avg_pool(x))
    return nn.Dense(3, name='fc')(x)


def _state_and_batch(all_correct):
  model = _Net()
  images = jax.random.normal(jax.random.PRNGKey(0), (6, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(1), images, train=False)
  state = train_step.create_train_state(
      model, variables, optax.sgd(0.1, momentum=0.9), jax.random.PRNGKey(2))
  # The labels the step's own training-mode forward predicts (same dropout
  # key), or labels that miss some of those predictions.
  rng = jax.random.fold_in(state.rng, state.step)
  logits, _ = model.apply(variables, images, train=True,
                          mutable=['batch_stats'], rngs={'dropout': rng})
  pred = jnp.argmax(logits, -1)
  labels = pred if all_correct else (pred + jnp.arange(6) % 2) % 3
  return state, dict(image=images, label=labels.astype(jnp.int32))


@pytest.mark.parametrize('all_correct', [True, False])
def test_skip_correct_gives_the_danil_step(all_correct):
  """With or without the skip, the step is the same: the skip takes the plain
  gradient only where Ld = 0 (Eq. 5) makes it exact."""
  state, batch = _state_and_batch(all_correct)
  step = lambda skip: jax.jit(train_step.step_for(
      'danil', lam=1.0, eps=1e-4, reduction='per_image',
      skip_correct=skip))(state, batch)
  (new, metrics), (new_ref, metrics_ref) = step(True), step(False)
  assert (float(metrics_ref['misclassified']) == 0.0) == all_correct
  assert (float(metrics_ref['distraction']) == 0.0) == all_correct
  assert float(metrics['skipped']) == float(all_correct)
  for key in metrics_ref:
    np.testing.assert_allclose(metrics[key], metrics_ref[key], rtol=1e-5,
                               err_msg=key)
  for got, want in zip(jax.tree.leaves((new.params, new.batch_stats,
                                        new.opt_state)),
                       jax.tree.leaves((new_ref.params, new_ref.batch_stats,
                                        new_ref.opt_state))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
