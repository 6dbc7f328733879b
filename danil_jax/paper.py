r"""The paper's Tables 1-4: data set x backbone x method x seed, one command.

  python -m danil_jax.paper --workdir=runs/paper --seeds=0,1,2 \
      --pretrained_root=pretrained [--datasets=ham10000,aptos2019,crc_msi] \
      [--backbones=resnet50,vgg11,inception_v4,efficientnet_b0] \
      [--methods=base,ohem,danil] [--data_dir=DIR] [--manual_root=DIR] \
      [--dataset_config=ham10000:dataset.builder_config=random] \
      [--config.x=y ...] [--emit_jobs=FILE | --collect]

Each run starts from `configs/<dataset>.py` (the paper's settings), then the
`--config.x=y` overrides (for every data set), `--data_dir`, `--manual_root`
(DIR/<dataset>) and `--dataset_config=NAME:key=value` (one data set), and
finally the grid's model, ImageNet weights (PRETRAINED_ROOT/<backbone>, as
written by `danil_jax.convert`; `--pretrained_root=''` trains from scratch),
method and seed. Runs live in WORKDIR/<dataset>/<backbone>/<method>_seed<s>:
a finished one (final_metrics.json) is read, not retrained, provided its
config.json agrees with the grid's; an unfinished one resumes. Missing
weights or archives are named before anything trains.

`--emit_jobs=FILE` writes one self-contained `python -m danil_jax.main`
command per unfinished run instead (a SLURM array or pod scheduler runs line
i); `--collect` only reads finished runs. Every mode ends by writing
WORKDIR/paper_tables.{md,json} and printing the tables.
"""

import importlib
import json
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from danil_jax.configs import default
from danil_jax.experiments import comparison
from danil_jax.experiments import paper_grid
from danil_jax.experiments import paper_numbers as pn
from danil_jax.experiments import paper_tables
from danil_jax.runtime import cli
from danil_jax.runtime import run_config


def _define_flags() -> None:
  """The command's flags, defined only when it runs: the library functions
  below stay importable beside other commands that define --workdir."""
  global _WORKDIR, _SEEDS, _DATASETS, _BACKBONES, _METHODS, _PRETRAINED_ROOT
  global _DATA_DIR, _MANUAL_ROOT, _DATASET_CONFIG, _HEADLINE, _EMIT_JOBS
  global _COLLECT
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of all the runs.')
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed).')
  _DATASETS = flags.DEFINE_list('datasets', list(pn.DATASETS),
                                'Data sets: configs/<name>.py.')
  _BACKBONES = flags.DEFINE_list('backbones', list(pn.BACKBONES),
                                 'Backbones (config.model.name).')
  _METHODS = flags.DEFINE_list(
      'methods', list(pn.RUN_METHODS),
      "Methods (config.method); base is the reference. 'control': DANIL "
      "with lam = 0, the noise floor (not in the paper).")
  _PRETRAINED_ROOT = flags.DEFINE_string(
      'pretrained_root', None,
      "One folder per backbone from danil_jax.convert; '' trains from "
      "scratch (not the paper's setting).")
  _DATA_DIR = flags.DEFINE_string('data_dir', None,
                                  'dataset.data_dir of every data set.')
  _MANUAL_ROOT = flags.DEFINE_string(
      'manual_root', None, 'dataset.manual_dir of each data set is '
      'MANUAL_ROOT/<dataset>.')
  _DATASET_CONFIG = flags.DEFINE_multi_string(
      'dataset_config', [], 'NAME:key=value, an override for one data set '
      '(e.g. ham10000:dataset.builder_config=random).')
  _HEADLINE = flags.DEFINE_list(
      'headline_metrics', [], 'Extra final_metrics.json keys to tabulate, '
      "besides those a config names under a '*headline*' key.")
  _EMIT_JOBS = flags.DEFINE_string('emit_jobs', None,
                                   'Write one command per unfinished run here.')
  _COLLECT = flags.DEFINE_bool('collect', False,
                               'Only read finished runs and render the tables.')
  cli.define_config_dict(default.get_config(), 'Overrides for every run '
                         '(keys of configs/default.py).')


# Keys that may differ between a finished run and the grid without changing
# its result.
INCIDENTAL_KEYS = ('dataset.data_dir', 'dataset.manual_dir',
                   'input.num_workers', 'log_every_steps',
                   'checkpoint_every_steps', 'keep_checkpoints', 'distributed')
TABLES_FILE = 'paper_tables'
# Run the emitted jobs from the directory holding the danil_jax package, so
# they import this checkout's code and configs.
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def config_mismatches(run: paper_grid.Run) -> list[str]:
  """Keys where a finished run's config.json differs from the grid's (keys
  on one side only, from another danil-jax version, are not compared)."""
  path = os.path.join(run.workdir, run_config.CONFIG_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    stored = json.load(f)
  changing, observing, _ = run_config.differences(
      stored, run_config.as_plain(run.config), ignore=INCIDENTAL_KEYS)
  return [f'{key}: run has {old!r}, grid asks {new!r}'
          for key, old, new in sorted(changing + observing,
                                      key=lambda entry: entry[0])]


def check_finished(runs: list[paper_grid.Run]) -> None:
  problems = []
  for run in runs:
    if run.finished():
      problems += [f'{run.workdir}: {m}' for m in config_mismatches(run)]
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


def final_metrics(run: paper_grid.Run) -> dict[str, float]:
  """A finished run's scalar test metrics (the last model's, if labelled)."""
  with open(os.path.join(run.workdir, paper_grid.FINAL_METRICS)) as f:
    final = json.load(f)
  if 'macro_f1' not in final and isinstance(final.get('last'), dict):
    final = final['last']
  return {k: float(v) for k, v in final.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
  results = {}
  for run in runs:
    if run.finished():
      results.setdefault(run.key, {})[run.seed] = final_metrics(run)
  datasets = list(dict.fromkeys(r.dataset for r in runs))
  backbones = list(dict.fromkeys(r.backbone for r in runs))
  methods = list(dict.fromkeys(r.method for r in runs))
  return paper_tables.build(
      results, datasets=datasets, backbones=backbones, methods=methods,
      seeds=seeds, headline_metrics=headline_metrics(runs, extra_metrics),
      calibration_metrics=comparison.CALIBRATION)


def _is_chief() -> bool:
  if 'jax' not in sys.modules:
    return True
  return sys.modules['jax'].process_index() == 0


def write_tables(workdir: str, tables: dict) -> str:
  text = paper_tables.to_markdown(tables)
  if _is_chief():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, TABLES_FILE + '.md'), 'w') as f:
      f.write(text + '\n')
    with open(os.path.join(workdir, TABLES_FILE + '.json'), 'w') as f:
      json.dump(tables, f, indent=2)
    print(text, flush=True)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _WORKDIR.value is None:
    raise app.UsageError('--workdir is required')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # as runtime.cli.setup does
  if _PRETRAINED_ROOT.value is None and not _COLLECT.value:
    raise app.UsageError(
        "--pretrained_root is required: the folder with one converted "
        "backbone per subfolder, or '' to train from scratch")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise app.UsageError(f'--seeds must be integers, got {_SEEDS.value}'
                         ) from None
  pretrained_root = os.path.expanduser(_PRETRAINED_ROOT.value or '')
  try:
    runs = paper_grid.plan(
        _WORKDIR.value, datasets=_DATASETS.value, backbones=_BACKBONES.value,
        methods=_METHODS.value, seeds=seeds, pretrained_root=pretrained_root,
        config_overrides=config_flags.get_override_values(
            flags.FLAGS['config']),
        data_dir=_DATA_DIR.value, manual_root=_MANUAL_ROOT.value,
        dataset_overrides=paper_grid.parse_dataset_overrides(
            _DATASET_CONFIG.value, _DATASETS.value))
    check_finished(runs)
  except ValueError as e:
    sys.exit(f'error: {e}')
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  todo = [r for r in runs if not r.finished()]
  if not _COLLECT.value and todo:
    _exit_if_missing(todo, pretrained_root)
  if _EMIT_JOBS.value:
    _emit_jobs(_EMIT_JOBS.value, todo, num_finished=len(runs) - len(todo))
    return
  if not _COLLECT.value:
    _train_all(runs, todo)
  write_tables(workdir, collect(runs, seeds, extra_metrics=_HEADLINE.value))


def _exit_if_missing(todo: list[paper_grid.Run], pretrained_root: str) -> None:
  """Ends the command, naming what is missing, before anything trains."""
  problems = missing_pretrained(pretrained_root, _BACKBONES.value) if (
      pretrained_root) else []
  problems += missing_data(todo)
  if problems:
    sys.exit('error: nothing was trained; missing (--pretrained_root=DIR '
             'holds DIR/<backbone>; --manual_root=DIR holds DIR/<dataset>, '
             'or --dataset_config=NAME:dataset.manual_dir=PATH):\n  '
             + '\n  '.join(problems))
  if not pretrained_root:
    print('warning: training from scratch (--pretrained_root=\'\'), not '
          "the paper's ImageNet initialisation", file=sys.stderr)


def _emit_jobs(path: str, todo: list[paper_grid.Run],
               num_finished: int) -> None:
  with open(path, 'w') as f:
    for run in todo:
      f.write(job_command(run) + '\n')
  print(f'{len(todo)} jobs ({num_finished} runs already finished) '
        f'in {path}; then: python -m danil_jax.paper --collect '
        'with the same flags', flush=True)


def _train_all(runs: list[paper_grid.Run], todo: list[paper_grid.Run]) -> None:
  """Trains the unfinished runs, one after the other."""
  # Even with nothing to train: the processes of a multi-host job then agree
  # on which one writes the tables.
  cli.setup(runs[0].config)  # before anything touches the JAX backend
  from danil_jax.trainer import train  # pylint: disable=g-import-not-at-top
  for i, run in enumerate(todo):
    if _is_chief():
      print(f'--- run {i + 1}/{len(todo)}: {run.dataset} {run.backbone} '
            f'{run.method} seed {run.seed}', flush=True)
    with cli.errors_exit():
      train.train_and_evaluate(run.config, run.workdir)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
