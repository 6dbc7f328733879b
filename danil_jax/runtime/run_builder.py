"""The parts of a run built from its config, alike for the trainer and the
commands that read a trained run back: the data set, its preprocessing, the
model (with its derivative rules) and its first weights.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from danil_jax import data_prep
from danil_jax import models
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost


@dataclasses.dataclass(frozen=True)
class Data:
  """The data set as a run reads it."""
  builder: Any  # a tfds DatasetBuilder
  class_names: list[str]
  pre: input_pipeline.Preprocessing


def open_data(config: ml_collections.ConfigDict, *, build: bool,
              augment: bool) -> Data:
  """The data set of `config`; `build`: this process builds it if missing.

  One build, many readers: process 0 builds a missing data set while the
  others wait; then they open it. Its failure ends every host at once.
  `augment`: the training augmentation in the preprocessing (config.input).
  """
  with multihost.chief_first('dataset',
                             config.distributed_init.data_build_timeout_s):
    builder = data_prep.open_dataset(config.dataset, build=build)
  return Data(builder, list(builder.info.features['label'].names),
              preprocessing(config, augment=augment))


def preprocessing(config: ml_collections.ConfigDict, *,
                  augment: bool) -> input_pipeline.Preprocessing:
  """The input size and normalisation of config.model's backbone."""
  model_info = models.info(config.model.name)
  return input_pipeline.Preprocessing(
      size=config.dataset.image_size or model_info.input_size,
      mean=model_info.mean, std=model_info.std,
      augment=config.input.augment if augment else False)


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """config.model's backbone with `num_classes` outputs and its conv rules."""
  return models.create(config.model.name, num_classes,
                       dtype=jnp.dtype(config.model.dtype),
                       conv_rules=config.model.conv_rules)


def init_model(config: ml_collections.ConfigDict, class_names: list[str],
               pre: input_pipeline.Preprocessing, mesh, *,
               pretrained: bool = True):
  """(model, its first variables replicated over `mesh`): initialised from
  config.seed, with config.model.pretrained's weights merged in."""
  model = create_model(config, len(class_names))
  init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  dummy = jnp.zeros((1, pre.size, pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=multihost.replicated(mesh))(init_rng, dummy)
  if pretrained and config.model.pretrained:
    from danil_jax.models import weights  # torch-free, but only needed here
    variables = weights.merge_pretrained(
        variables, weights.load(config.model.name, config.model.pretrained),
        head=models.info(config.model.name).head)
    # Each host loaded the same file: replicate without comparing copies.
    variables = multihost.replicate(variables, mesh)
  return model, variables
