"""A trained run read back from its workdir, for the evaluation commands.

Rebuilds the model, preprocessing and data set of `WORKDIR/config.json` and
restores a checkpoint's train state read-only: the run's own checkpoints,
logs and data iterator are never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from absl import logging

import data_prep
from danil_jax import best_checkpoint
from danil_jax import input_pipeline
from danil_jax import models
from danil_jax import sharding
from danil_jax import steps


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  builder: object
  class_names: list
  model: object
  pre: input_pipeline.Preprocessing
  mesh: object
  state: steps.TrainState
  step: int
  checkpoint: str  # 'best', 'last' or the step, as asked
  eval_step: object  # jitted steps.eval_step over the mesh


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{path} does not exist: is {workdir} a run directory '
                     '(python -m danil_jax.main --workdir=...)?')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if 'eval' not in config:  # a run from before config.eval existed
    from configs import default  # pylint: disable=g-import-not-at-top
    config.eval = default.get_config().eval
  return config


def load(workdir: str, checkpoint: str = 'last') -> TrainedRun:
  """The run in `workdir` with the model of `checkpoint` restored."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = read_config(workdir)
  directory, step = best_checkpoint.find_checkpoint(workdir, checkpoint)
  builder = data_prep.prepare(
      config.dataset.name, data_dir=config.dataset.data_dir,
      manual_dir=config.dataset.manual_dir or None,
      config=config.dataset.builder_config or None)
  class_names = list(builder.info.features['label'].names)
  mesh = sharding.make_mesh()
  model_info = models.info(config.model.name)
  pre = input_pipeline.Preprocessing(
      size=config.dataset.image_size or model_info.input_size,
      mean=model_info.mean, std=model_info.std, augment=False)
  model = models.create(config.model.name, len(class_names),
                        dtype=jnp.dtype(config.model.dtype))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, pre.size, pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=sharding.replicated(mesh))(init_rng, dummy)
  # The optimiser only gives the checkpoint's structure; its schedule's
  # values do not matter here.
  tx = steps.make_optimizer(config.optim, 1, config.num_epochs)
  state = sharding.replicate(
      steps.create_train_state(model, variables, tx, state_rng), mesh)
  state = steps.state_from_checkpoint(state, best_checkpoint.restore_state(
      directory, step, steps.state_to_checkpoint(state)))
  replicated, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  eval_step = jax.jit(steps.eval_step, in_shardings=(replicated, data),
                      out_shardings=replicated)
  return TrainedRun(config=config, builder=builder, class_names=class_names,
                    model=model, pre=pre, mesh=mesh, state=state, step=step,
                    checkpoint=checkpoint, eval_step=eval_step)


@contextlib.contextmanager
def command_errors_exit():
  """For the commands: quiet logs unless --verbosity was given; a bad flag
  or missing file ends the command with its message alone."""
  from danil_jax import cli  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  with cli.data_errors_exit():
    try:
      yield
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f'error: {e}')
