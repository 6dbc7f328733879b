"""Bad config values as named errors, before any data is built or compiled.

`check(config)` runs first in `train.train_and_evaluate`; `check_splits`
once the data set's builder exists (its split names are known only then),
still before the model is built. Each error names the key, the value and
what is allowed.
"""

import re

import ml_collections

from danil_jax import configs
from danil_jax.configs import default
from danil_jax import data_prep
from danil_jax import models
from danil_jax.data_prep.own import dataset as own_dataset
from danil_jax.method import losses
from danil_jax.method import misclassified_only
from danil_jax.method import registry
from danil_jax.runtime import multihost
from danil_jax.runtime import tta
from danil_jax.trainer import train_step

# Smallest input side each backbone accepts: below it a feature map becomes
# empty (Inception-v4's unpadded stem and reductions; VGG's five 2x2 pools
# before its 7x7 adaptive pool). Others pad every stride and accept any size.
MIN_IMAGE_SIZE = {'inception_v4': 75, 'vgg11': 32, 'vgg11_bn': 32}
DTYPES = ('float32', 'bfloat16', 'float16')
ConfigError = configs.ConfigError


def _positive_int(config, key: str) -> None:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f'config.{key} must be a positive integer, got '
                      f'{value!r}')


def _get(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _one_of(config, key: str, allowed) -> None:
  value = _get(config, key)
  if value not in allowed:
    raise ConfigError(f'config.{key} must be one of {list(allowed)}, got '
                      f'{value!r}')


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value a run cannot use."""
  for key, replaced_by in default.REMOVED_KEYS.items():
    section, _, name = key.rpartition('.')
    if name in _get(config, section):
      raise ConfigError(f'config.{key} no longer exists: {replaced_by}')
  _one_of(config, 'method', registry.names())
  _one_of(config, 'model.name', models.names())
  _one_of(config, 'model.dtype', DTYPES)
  _one_of(config, 'optim.schedule', train_step.SCHEDULES)
  _one_of(config, 'eval.tta', tta.MODES)
  for key in ('input.global_batch_size', 'input.eval_batch_size',
              'num_epochs', 'log_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints',
              'faults.max_nonfinite_in_a_row'):
    _positive_int(config, key)
  if config.max_steps != -1:
    _positive_int(config, 'max_steps')
  if config.dataset.num_classes != 0:  # 0: the data set's
    _positive_int(config, 'dataset.num_classes')
  learning_rate = config.optim.learning_rate
  if not isinstance(learning_rate, (int, float)) or not (
      0 < learning_rate < float('inf')):
    raise ConfigError('config.optim.learning_rate must be a positive number, '
                      f'got {learning_rate!r}')
  for key in ('optim.momentum', 'optim.weight_decay', 'optim.warmup_epochs',
              'danil.lam', 'danil.eps'):
    value = _get(config, key)
    if not isinstance(value, (int, float)) or not value >= 0:
      raise ConfigError(f'config.{key} must be a number >= 0, got {value!r}')
  _check_danil(config)
  _check_ema(config)
  if not 0 < config.ohem.keep_ratio <= 1:
    raise ConfigError('config.ohem.keep_ratio must be in (0, 1], got '
                      f'{config.ohem.keep_ratio!r}')
  if not config.dataset.name:
    raise ConfigError('config.dataset.name is empty; use a data set config '
                      '(configs/demo.py, configs/crc_msi.py, ...)')
  if config.dataset.name == data_prep.FOLDER:
    # Its source and options (data_prep.own.dataset.BadOption).
    own_dataset.Options.from_config(config.dataset)
  _check_image_size(config)


def _check_danil(config) -> None:
  _one_of(config, 'danil.reduction', losses.REDUCTIONS)
  _one_of(config, 'danil.map_dtype', misclassified_only.MAP_DTYPES)
  for key in ('danil.skip_correct', 'danil.misclassified_only'):
    value = _get(config, key)
    if not isinstance(value, bool):
      raise ConfigError(f'config.{key} must be True or False, got {value!r}')
  danil = config.danil
  if danil.map_dtype != 'compute' and not danil.misclassified_only:
    raise ConfigError(
        f'config.danil.map_dtype {danil.map_dtype!r} needs '
        'config.danil.misclassified_only=True: the exact loss takes its maps '
        "from the step's one forward in the compute dtype (float32 maps there "
        "would need a second, float32 forward); use map_dtype='compute' or "
        "config.model.dtype='float32'")


def _check_ema(config) -> None:
  decay = config.optim.ema_decay
  if (isinstance(decay, bool) or not isinstance(decay, (int, float))
      or not 0 <= decay < 1):
    raise ConfigError('config.optim.ema_decay must be a number in [0, 1) '
                      f'(0 = no weight EMA), got {decay!r}')
  if not isinstance(config.eval.use_ema, bool):
    raise ConfigError('config.eval.use_ema must be True or False, got '
                      f'{config.eval.use_ema!r}')


def _check_image_size(config) -> None:
  size, name = config.dataset.image_size, config.model.name
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ConfigError('config.dataset.image_size must be 0 (the backbone\'s '
                      f'default) or a positive integer, got {size!r}')
  minimum = MIN_IMAGE_SIZE.get(name, 1)
  if 0 < size < minimum:
    raise ConfigError(
        f'config.dataset.image_size {size} is below the smallest input '
        f'{name} accepts, {minimum} (its default is '
        f'{models.info(name).input_size}; 0 takes the default)')


def split_names(expression: str) -> list[str]:
  """The split names of a TFDS split expression, e.g. 'train[:80%]+test'."""
  return [re.sub(r'\[.*\]$', '', part.strip())
          for part in expression.split('+')]


def check_splits(config: ml_collections.ConfigDict, builder) -> None:
  """Raises ConfigError for a train/eval split the data set does not have."""
  available = sorted(builder.info.splits.keys())
  for key in ('train_split', 'eval_split'):
    expression = config.dataset[key]
    for name in split_names(expression):
      if name not in available:
        raise ConfigError(
            f'config.dataset.{key} {expression!r} names split {name!r}, '
            f'which {config.dataset.name!r} does not have; its splits are '
            f'{available}')


def check_batch_sizes(config: ml_collections.ConfigDict, mesh) -> None:
  """Raises ConfigError for a batch size the mesh's devices cannot share."""
  for key in ('global_batch_size', 'eval_batch_size'):
    try:
      multihost.per_process_batch_size(config.input[key], mesh)
    except ValueError as e:
      raise ConfigError(f'config.input.{key}: {e}') from None


def check_num_classes(config: ml_collections.ConfigDict,
                      class_names: list[str]) -> None:
  """Raises ConfigError where config.dataset.num_classes is set and is not
  the data set's."""
  if config.dataset.num_classes not in (0, len(class_names)):
    raise ConfigError(
        f'config.dataset.num_classes is {config.dataset.num_classes} but '
        f'{config.dataset.name!r} has {len(class_names)} classes: '
        f'{class_names} (0 takes them from the data)')
