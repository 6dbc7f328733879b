"""The paper grid's runs (paper_grid.plan): checked, trained, read into tables.

Before anything trains, `check_finished` holds every finished run to the
grid's config (grid_runs.mismatches) and `missing_pretrained` and
`missing_data` name what the unfinished ones still need. `train_all` trains
them one after the other, or `job_command` writes each as its own command.
`collect` reads the finished runs into paper_tables' tables and
`write_tables` writes and prints them.
"""

import importlib
import json
import os
import shlex

from danil_jax.experiments import comparison
from danil_jax.experiments import grid_runs
from danil_jax.experiments import paper_grid
from danil_jax.experiments import paper_tables
from danil_jax.runtime import multihost
from danil_jax.runtime import run_config

TABLES_FILE = 'paper_tables'  # .md and .json
# Run the emitted jobs from the directory holding the danil_jax package, so
# they import this checkout's code and configs.
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def missing_pretrained(pretrained_root: str, backbones) -> list[str]:
  """One line per backbone without converted weights under the root."""
  from danil_jax.models import weights  # pylint: disable=g-import-not-at-top
  problems = []
  for backbone in backbones:
    path = os.path.join(pretrained_root, backbone)
    try:
      meta = weights.read_metadata(path)
    except weights.ConversionError:
      problems.append(
          f'{backbone}: no converted weights in {path} (python -m '
          f'danil_jax.convert --arch={backbone} --checkpoint=... '
          f'--out={path})')
      continue
    if meta.get('arch') != backbone:
      problems.append(f'{backbone}: {path} holds {meta.get("arch")} weights')
    elif not os.path.isfile(os.path.join(path, weights.VARIABLES_FILE)):
      problems.append(f'{backbone}: {path} lacks {weights.VARIABLES_FILE}')
  return problems


def missing_data(runs: list[paper_grid.Run]) -> list[str]:
  """The archives each unbuilt data set still needs, one message each."""
  from danil_jax import data_prep  # pylint: disable=g-import-not-at-top
  from danil_jax.data_prep import common  # pylint: disable=g-import-not-at-top
  problems, seen = [], set()
  for run in runs:
    d = run.config.dataset
    key = (d.name, d.data_dir, d.builder_config, d.manual_dir)
    if key in seen or run.finished():
      continue
    seen.add(key)
    builder = data_prep.get_builder(d.name, data_dir=d.data_dir,
                                    config=d.builder_config or None)
    check = getattr(builder, 'check_manual_dir', None)
    if not builder.is_prepared() and check is not None:
      try:
        check(os.path.expanduser(d.manual_dir) if d.manual_dir else None)
      except common.ManualFilesMissing as e:
        problems.append(f'{d.name}: {e}')
  return problems


def check_finished(runs: list[paper_grid.Run]) -> None:
  """ValueError naming every key in which a finished run differs from the
  grid's config (grid_runs.mismatches)."""
  problems = []
  for run in runs:
    if run.finished():
      problems += [f'{run.workdir}: {m}'
                   for m in grid_runs.mismatches(run.workdir, run.config)]
  if problems:
    raise ValueError('finished runs were trained with another config (move '
                     'them away or pass the same overrides):\n  '
                     + '\n  '.join(problems))


def _flag_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return repr(value) if isinstance(value, float) else str(value)


def job_command(run: paper_grid.Run) -> str:
  """A shell line that trains `run` exactly as the runner would."""
  config_file = importlib.import_module(f'configs.{run.dataset}').__file__
  reference = run_config.flatten(
      paper_grid.dataset_config(run.dataset).to_dict())
  args = ['python', '-m', 'danil_jax.main', f'--config={config_file}',
          f'--workdir={run.workdir}']
  for key, value in run_config.flatten(run.config.to_dict()).items():
    if key not in reference:
      raise ValueError(f'{key} is not in configs/{run.dataset}.py')
    if (key in paper_grid.GRID_KEYS or value != reference[key]
        or type(value) is not type(reference[key])):
      args.append(f'--config.{key}={_flag_value(value)}')
  return (f'cd {shlex.quote(CODE_ROOT)} && '
          + ' '.join(shlex.quote(a) for a in args))


def emit_jobs(path: str, todo: list[paper_grid.Run]) -> None:
  """Writes `job_command` of each run in `todo` to `path`, one a line."""
  with open(path, 'w') as f:
    for run in todo:
      f.write(job_command(run) + '\n')


def train_all(todo: list[paper_grid.Run]) -> None:
  """Trains the unfinished runs, one after the other."""
  for i, run in enumerate(todo):
    grid_runs.announce(f'--- run {i + 1}/{len(todo)}: {run.dataset} '
                       f'{run.backbone} {run.method} seed {run.seed}')
    grid_runs.train(run.config, run.workdir)


def headline_metrics(runs: list[paper_grid.Run], extra=()) -> list[str]:
  """Metrics named by --headline_metrics or a config's '*headline*' key."""
  names = list(extra)
  for run in runs:
    for key, value in run_config.flatten(run.config.to_dict()).items():
      if 'headline' in key.rsplit('.', 1)[-1] and isinstance(
          value, (str, list, tuple)):
        for name in [value] if isinstance(value, str) else value:
          if name and name not in names and name not in ('macro_f1',
                                                          'accuracy'):
            names.append(name)
  return names


def collect(runs: list[paper_grid.Run], seeds, *, extra_metrics=()) -> dict:
  """paper_tables.build of the finished runs' final metrics."""
  results = {}
  for run in runs:
    metrics = grid_runs.final_metrics(run.workdir)
    if metrics is not None:
      results.setdefault(run.key, {})[run.seed] = metrics
  datasets = list(dict.fromkeys(r.dataset for r in runs))
  backbones = list(dict.fromkeys(r.backbone for r in runs))
  methods = list(dict.fromkeys(r.method for r in runs))
  return paper_tables.build(
      results, datasets=datasets, backbones=backbones, methods=methods,
      seeds=seeds, headline_metrics=headline_metrics(runs, extra_metrics),
      calibration_metrics=comparison.CALIBRATION)


def write_tables(workdir: str, tables: dict) -> str:
  """WORKDIR/paper_tables.{md,json} and the markdown on stdout, from
  process 0; returns the markdown."""
  text = paper_tables.to_markdown(tables)
  if multihost.is_chief():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, TABLES_FILE + '.md'), 'w') as f:
      f.write(text + '\n')
    with open(os.path.join(workdir, TABLES_FILE + '.json'), 'w') as f:
      json.dump(tables, f, indent=2)
    print(text, flush=True)
  return text
