"""Config pinning: a workdir holds one run, under the config it started with.

The first run in a workdir writes its config to `WORKDIR/config.json`. A
rerun (to resume, or to train longer) compares its config with that file,
key by key (dotted paths such as `optim.learning_rate`):

- keys under `OBSERVE_ONLY` only extend the run or change what is observed
  or how fast (more epochs or steps, logging and checkpoint intervals,
  paths of the same data, fault handling): a change is
  logged and the run goes on;
- every other key is taken to change the result (method, model, data set and
  splits, batch sizes, optimiser and schedule, seed, lambda/eps/reduction,
  dtype, and any key added later that is not listed here): a change is an
  error, `ConfigChanged`, listing each key with its old and new value, unless
  config.faults.allow_config_change is True, in which case the changes are
  logged and `config.json` takes the new values (the old file is kept as
  `config.json.<time>`);
- a key present on one side only (a newer or older danil-jax added or
  removed it) is logged, never an error.

One exception: with the cosine schedule, `num_epochs` sets the length of the
decay, so changing it changes the learning rate of the steps still to come;
it then counts as changing the result.
"""

import json
import time
from typing import Any

from absl import logging
from etils import epath
from flax import traverse_util
import ml_collections

CONFIG_FILE = 'config.json'

# Dotted key prefixes that a rerun may change freely. The input order is a
# function of (seed, step) alone (input_pipeline.train_loader), whatever the
# number of grain workers or hosts, so those may change too.
OBSERVE_ONLY = (
    'num_epochs',
    'max_steps',
    'log_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'dataset.data_dir',
    'dataset.manual_dir',
    'dataset.csv',
    # How fast a folder data set is built, and whether a changed source is
    # rebuilt; WORKDIR/data.json pins the data itself (data_pin.py).
    'dataset.own.workers',
    'dataset.own.on_change',
    'distributed',
    'distributed_init',
    'input.num_workers',
    'faults',
    # Only the final report's test-time augmentation; training is the same.
    'eval.tta',
)

# Dotted key prefixes that may differ between the hosts of one job: how each
# host joins and where it finds the same data (only process 0 builds it,
# from manual_dir), and how many loader processes its CPUs run. Every other
# key must be the same on every host (multihost.same_on_every_host).
PER_HOST = (
    'distributed_init',
    'dataset.data_dir',
    'dataset.manual_dir',
    'input.num_workers',
)


class ConfigChanged(ValueError):
  """A rerun's config changes keys that change the result of the run."""


def flatten(tree: dict) -> dict[str, Any]:
  """Nested dicts -> {'a.b.c': leaf} (lists and scalars are leaves)."""
  return traverse_util.flatten_dict(tree, sep='.')


def as_plain(config: ml_collections.ConfigDict) -> dict:
  """`config` as config.json holds it, so both sides of a comparison do."""
  # Through JSON: tuples become lists and so on.
  return json.loads(config.to_json_best_effort())


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + '.') for p in prefixes)


def shared_by_every_host(config: ml_collections.ConfigDict) -> dict:
  """{dotted key: value} of the keys every host of a job must agree on."""
  return {key: value for key, value in flatten(as_plain(config)).items()
          if not _under(key, PER_HOST)}


def differences(old: dict, new: dict, *,
                ignore=()) -> tuple[list, list, list]:
  """(result-changing, observe-only, one-sided) differences as
  (key, old value, new value), with `MISSING` for an absent key.

  Each list is sorted by key. Keys under an `ignore` prefix (dotted, as in
  `OBSERVE_ONLY`) are left out.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  cosine = new_flat.get('optim.schedule') == 'cosine'
  changing, observing, one_sided = [], [], []
  for key in sorted(set(old_flat) | set(new_flat)):
    old_value = old_flat.get(key, MISSING)
    new_value = new_flat.get(key, MISSING)
    if old_value == new_value or _under(key, ignore):
      continue
    entry = (key, old_value, new_value)
    if old_value is MISSING or new_value is MISSING:
      one_sided.append(entry)
    elif _under(key, OBSERVE_ONLY) and not (key == 'num_epochs' and cosine):
      observing.append(entry)
    else:
      changing.append(entry)
  return changing, observing, one_sided


class _Missing:

  def __repr__(self):
    return '(absent)'


MISSING = _Missing()


def _lines(entries) -> str:
  return '\n'.join(f'  {key}: {old!r} -> {new!r}' for key, old, new in entries)


def pin(config: ml_collections.ConfigDict, workdir: str, *,
        write: bool = True) -> None:
  """Writes `config` to WORKDIR/config.json, or compares it with the file.

  Raises ConfigChanged if a result-changing key differs and
  config.faults.allow_config_change is False. `write` False (processes other
  than the first) compares without writing.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    if write:
      _write(path, config)
    return
  changing, observing, one_sided = differences(_read(path), as_plain(config))
  if observing:
    logging.warning('%s: resuming with changed keys that only extend or '
                    'observe the run:\n%s', path, _lines(observing))
  if one_sided:
    logging.warning('%s: keys present in only one of the old and the new '
                    'config (another danil-jax version?), old -> new:\n%s',
                    path, _lines(one_sided))
  if not changing:
    return
  if not config.get('faults', {}).get('allow_config_change', False):
    raise _changed_error(workdir, path, changing)
  logging.warning('%s: continuing under changed keys that change the result '
                  '(config.faults.allow_config_change), old -> new:\n%s',
                  path, _lines(changing))
  if write:
    path.rename(path.with_name(
        f'{path.name}.{time.strftime("%Y%m%d-%H%M%S")}'))
    _write(path, config)


def _read(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ConfigChanged(
        f'{path} cannot be read ({e}); it records the config this workdir '
        'was trained with. Restore it, or delete it to pin the current '
        'config.') from None


def _changed_error(workdir: str, path: epath.Path,
                   changing: list) -> ConfigChanged:
  cosine_note = ''
  if any(key == 'num_epochs' for key, _, _ in changing):
    cosine_note = ('\n(num_epochs sets the length of the cosine schedule: '
                   'changing it changes the learning rate of the steps to '
                   'come.)')
  return ConfigChanged(
      f'{workdir} holds a run trained with another config ({path}); these '
      f'keys change its result, old -> new:\n{_lines(changing)}{cosine_note}'
      '\nUse a new --workdir for a new run, or pass '
      '--config.faults.allow_config_change=True to continue this one under '
      'the new values.')


def _write(path: epath.Path, config: ml_collections.ConfigDict) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(path)
