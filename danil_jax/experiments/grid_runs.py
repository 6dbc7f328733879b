"""A grid's runs, one directory each: naming, reusing, reading, training.

What the commands over many runs (danil_jax.compare: methods x sweep points x
seeds; danil_jax.paper: data sets x backbones x methods x seeds) do alike:

- `run_dir` names a run's directory after the keys that change it;
- `mismatches` is the one rule for reusing a finished run: the config.json
  it was trained with and the config asked for differ in no key that
  changes its final report (run_config.differences), leaving out the keys
  that only observe it (`INCIDENTAL`) and the sections of the methods it
  does not read (method/registry.py); a key on one side only
  (another danil-jax version) is not compared, as run_config.pin logs it;
- `parse_value` turns the command line's `key=text` into the key's type,
  `parent_and_name` finds the dotted key it sets;
- `final_metrics` reads a finished run's scalar metrics, `finished_report`
  those of a finished run that is the one asked for;
- `train` trains one run, `announce` says so from process 0 alone.
"""

import ast
import json
import os

from danil_jax.experiments import comparison
from danil_jax.method import registry
from danil_jax.runtime import cli
from danil_jax.runtime import multihost
from danil_jax.runtime import run_config
from danil_jax.trainer import final_report

FINAL_METRICS = final_report.FILE
# Keys of run_config.OBSERVE_ONLY that change a finished run's final report:
# how long it trained and the report's test-time augmentation.
REPORT_CHANGING = ('num_epochs', 'max_steps', 'eval.tta')
# Keys in which a finished run may differ from the one asked for and still be
# it: logging, checkpoints, where and how fast it reads the same data, how
# its hosts join, fault handling.
INCIDENTAL = tuple(key for key in run_config.OBSERVE_ONLY
                   if key not in REPORT_CHANGING)


def run_dir(workdir: str, method: str, seed: int, point=()) -> str:
  """WORKDIR/<method>[_<key>=<value>...]_seed<seed>, naming only the keys of
  the sweep point ((key, text, value), ...) that change this method's run."""
  swept = ''.join(f'_{key}={text}' for key, text, _ in point
                  if comparison.applies(key, method))
  return os.path.join(workdir, f'{method}{swept}_seed{seed}')


def parent_and_name(config, key: str):
  """(the section holding dotted `key`, its last part); KeyError where
  `config` has no such key."""
  node, *path = [config] + key.split('.')
  for part in path[:-1]:
    node = node.get(part) if hasattr(node, 'get') else None
  if not hasattr(node, 'get') or path[-1] not in node:
    raise KeyError(key)
  return node, path[-1]


def parse_value(text: str, current, key: str):
  """A command-line string as the type of the config value it replaces:
  a bool from true/false/1/0, a number, a tuple or list from its Python
  literal (a lone value makes one element), else the string itself."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    if isinstance(current, (int, float)):
      return type(current)(text)
    if isinstance(current, (tuple, list)):
      value = ast.literal_eval(text)
      return type(current)(value if isinstance(value, (tuple, list))
                           else (value,))
    return text
  except (ValueError, SyntaxError):
    raise ValueError(f'{key}={text!r}: expected a {type(current).__name__}'
                     ) from None


def mismatches(workdir: str, config) -> list[str]:
  """'key: run has X, grid asks Y' for each key in which the run in
  `workdir` differs from `config` in its result; one line where its
  config.json cannot be read (what it trained is then unknown)."""
  path = os.path.join(workdir, run_config.CONFIG_FILE)
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    return [f'{run_config.CONFIG_FILE} cannot be read ({e})']
  unread = [s for s in registry.sections()
            if s != registry.METHODS[config.method].section]
  changing, observing, _ = run_config.differences(
      stored, run_config.as_plain(config), ignore=INCIDENTAL + tuple(unread))
  return [f'{key}: run has {old!r}, grid asks {new!r}'
          for key, old, new in sorted(changing + observing,
                                      key=lambda entry: entry[0])]


def final_metrics(workdir: str) -> dict[str, float] | None:
  """A finished run's scalar test metrics (its last model's, where the
  report is labelled by model); None if the run has not finished."""
  try:
    with open(os.path.join(workdir, FINAL_METRICS)) as f:
      final = json.load(f)
  except (OSError, ValueError):
    return None
  if 'macro_f1' not in final and isinstance(final.get('last'), dict):
    final = final['last']
  return {k: float(v) for k, v in final.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def finished_report(workdir: str, config) -> dict[str, float] | None:
  """`final_metrics` of the run in `workdir` if it finished and is a run
  of `config` (`mismatches`), else None."""
  report = final_metrics(workdir)
  if report is None or mismatches(workdir, config):
    return None
  return report


def announce(line: str) -> None:
  """Prints `line` once per job: on process 0."""
  if multihost.is_chief():
    print(line, flush=True)


def train(config, workdir: str) -> dict:
  """Trains (or resumes) one run; returns its final report. Errors a user
  can act on end the command with their message (cli.errors_exit)."""
  # Here, not at the top: reading finished runs needs no trainer.
  # pylint: disable-next=g-import-not-at-top
  from danil_jax.trainer import train as trainer
  with cli.errors_exit():
    return trainer.train_and_evaluate(config, workdir)
