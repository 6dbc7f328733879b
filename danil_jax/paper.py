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
config.json agrees with the grid's on every key that changes its result
(danil_jax.experiments.grid_runs); an unfinished one resumes. Missing
weights or archives are named before anything trains.

`--emit_jobs=FILE` writes one self-contained `python -m danil_jax.main`
command per unfinished run instead (a SLURM array or pod scheduler runs line
i); `--collect` only reads finished runs. Every mode ends by writing
WORKDIR/paper_tables.{md,json} and printing the tables.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from danil_jax.configs import default
from danil_jax.experiments import paper_grid
from danil_jax.experiments import paper_numbers as pn
from danil_jax.experiments import paper_runs
from danil_jax.runtime import cli

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
    paper_runs.check_finished(runs)
  except ValueError as e:
    sys.exit(f'error: {e}')
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  todo = [r for r in runs if not r.finished()]
  if not _COLLECT.value and todo:
    _exit_if_missing(todo, pretrained_root)
  if _EMIT_JOBS.value:
    paper_runs.emit_jobs(_EMIT_JOBS.value, todo)
    print(f'{len(todo)} jobs ({len(runs) - len(todo)} runs already finished) '
          f'in {_EMIT_JOBS.value}; then: python -m danil_jax.paper --collect '
          'with the same flags', flush=True)
    return
  if not _COLLECT.value:
    # Even with nothing to train: the processes of a multi-host job then
    # agree on which one writes the tables.
    cli.setup(runs[0].config)  # before anything touches the JAX backend
    paper_runs.train_all(todo)
  paper_runs.write_tables(workdir, paper_runs.collect(
      runs, seeds, extra_metrics=_HEADLINE.value))


def _exit_if_missing(todo: list[paper_grid.Run], pretrained_root: str) -> None:
  """Ends the command, naming what is missing, before anything trains."""
  problems = paper_runs.missing_pretrained(
      pretrained_root, _BACKBONES.value) if pretrained_root else []
  problems += paper_runs.missing_data(todo)
  if problems:
    sys.exit('error: nothing was trained; missing (--pretrained_root=DIR '
             'holds DIR/<backbone>; --manual_root=DIR holds DIR/<dataset>, '
             'or --dataset_config=NAME:dataset.manual_dir=PATH):\n  '
             + '\n  '.join(problems))
  if not pretrained_root:
    print('warning: training from scratch (--pretrained_root=\'\'), not '
          "the paper's ImageNet initialisation", file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
