"""The methods a run can train with (danil_jax/method/registry.py): each
entry's loss against the loss written out here, and its config section."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from danil_jax.configs import default
from danil_jax.method import losses
from danil_jax.method import registry
from danil_jax.trainer import config_checks


def _logits_fn(images):
  """A linear model: (logits, no model updates)."""
  weights = jnp.linspace(-1.0, 1.0, 12 * 3).reshape(12, 3)
  return images.reshape(images.shape[0], -1) @ weights, {}


def _batch():
  images = jax.random.normal(jax.random.PRNGKey(0), (6, 2, 2, 3))
  return images, jnp.array([0, 1, 2, 0, 1, 2])


def test_base_and_ohem_are_the_cross_entropy_of_the_kept_images():
  images, labels = _batch()
  logits, _ = _logits_fn(images)
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  loss, aux = registry.METHODS['base'].loss(_logits_fn, images, labels)
  np.testing.assert_allclose(loss, per_image.mean(), rtol=1e-6)
  assert float(aux['distraction']) == 0.0
  np.testing.assert_array_equal(
      aux['misclassified'], (logits.argmax(-1) != labels).astype(np.float32))
  loss, _ = registry.METHODS['ohem'].loss(_logits_fn, images, labels,
                                          keep_ratio=0.5)
  np.testing.assert_allclose(loss, np.sort(per_image)[-3:].mean(), rtol=1e-6)


def test_danil_is_the_public_loss_with_the_configs_keys():
  images, labels = _batch()
  config = default.get_config()
  config.danil.lam = 0.5
  options = registry.options('danil', config)
  assert options == dict(lam=0.5, eps=config.danil.eps,
                         reduction=config.danil.reduction)
  got, _ = registry.METHODS['danil'].loss(_logits_fn, images, labels,
                                          **options)
  want = losses.danil_loss(_logits_fn, images, labels, **options,
                           has_aux=True)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize('name', registry.names())
def test_every_method_has_its_section_and_keys_in_the_config(name):
  config = default.get_config()
  method = registry.METHODS[name]
  for key in method.options:
    assert key in config[method.section], (name, key)
  config.dataset.name = 'danil_demo'
  config.method = name
  config_checks.check(config)  # a registered method is a valid value


def test_an_unregistered_method_is_named_with_the_registered_ones():
  config = default.get_config()
  config.dataset.name = 'danil_demo'
  config.method = 'focal'
  with pytest.raises(config_checks.ConfigError,
                     match=r"config\.method must be one of \['base', 'ohem', "
                           r"'danil'\], got 'focal'"):
    config_checks.check(config)


def test_a_removed_key_is_named_with_what_replaced_it():
  config = default.get_config()
  config.dataset.name = 'danil_demo'
  config.faults.preemption_sync_every_steps = 10  # an old config file's line
  with pytest.raises(config_checks.ConfigError,
                     match='preemption_sync_every_steps no longer exists: '
                           "every step asks JAX's preemption sync point"):
    config_checks.check(config)
