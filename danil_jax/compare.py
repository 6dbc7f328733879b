"""Methods compared over seeds: mean +- sd of the test macro-F1 and accuracy.

  python -m danil_jax.compare --config=configs/demo.py --workdir=/tmp/cmp \
      --methods=base,danil --seeds=0,1,2 [--config.num_epochs=3 ...]

Trains every (method, seed) pair into WORKDIR/<method>_seed<seed> (a rerun
resumes or reuses the runs already there), then prints and writes
WORKDIR/comparison.json: per method the mean and sample standard deviation
over seeds, and per method the paired difference to the first method on the
same seeds. One run per method says nothing: DANIL's effect at the paper's
lambda is often smaller than the spread between seeds.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of all the runs.')
_METHODS = flags.DEFINE_list('methods', ['base', 'danil'],
                             'Methods to compare; the first is the reference.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed).')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)

METRICS = ('macro_f1', 'accuracy')


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, f'{method}_seed{seed}')


def summarize(results: dict[str, dict[int, dict]]) -> dict:
  """{method: {seed: final metrics}} -> mean, sd and paired differences.

  The standard deviation is the sample one (ddof=1); the differences pair each
  method with the first one on the seeds both have.
  """
  methods = list(results)
  reference = results[methods[0]]
  summary = {}
  for method in methods:
    entry = dict(seeds=sorted(results[method]))
    for metric in METRICS:
      values = np.array([results[method][s][metric] for s in entry['seeds']])
      entry[metric] = dict(
          mean=float(values.mean()),
          sd=float(values.std(ddof=1)) if len(values) > 1 else float('nan'),
          values=values.tolist())
      if method != methods[0]:
        common = [s for s in entry['seeds'] if s in reference]
        diff = np.array([results[method][s][metric] - reference[s][metric]
                         for s in common])
        entry[metric][f'minus_{methods[0]}'] = dict(
            mean=float(diff.mean()),
            sd=float(diff.std(ddof=1)) if len(diff) > 1 else float('nan'))
    summary[method] = entry
  return summary


def format_summary(summary: dict) -> str:
  methods = list(summary)
  lines = [f"{'method':<8} {'seeds':>5}  " + '  '.join(
      f'{m:>24}' for m in METRICS)]
  for method in methods:
    entry = summary[method]
    cells = []
    for metric in METRICS:
      value = entry[metric]
      cell = f"{value['mean']:.4f} +- {value['sd']:.4f}"
      paired = value.get(f'minus_{methods[0]}')
      if paired:
        cell += f" ({paired['mean']:+.4f})"
      cells.append(f'{cell:>24}')
    lines.append(f"{method:<8} {len(entry['seeds']):>5}  " + '  '.join(cells))
  lines.append(f'mean +- sample sd over seeds; (+x): mean paired difference '
               f'to {methods[0]} on the same seeds.')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required')
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise app.UsageError(f'--seeds must be integers, got {_SEEDS.value}'
                         ) from None
  from danil_jax import cli  # pylint: disable=g-import-not-at-top
  cli.setup(config)  # before anything touches the JAX backend
  from danil_jax import train  # pylint: disable=g-import-not-at-top
  results = {}
  for method in _METHODS.value:
    results[method] = {}
    for seed in seeds:
      run_config = config.copy_and_resolve_references()
      run_config.unlock()
      run_config.method, run_config.seed = method, seed
      run_config.lock()
      print(f'--- {method}, seed {seed}', flush=True)
      with cli.data_errors_exit():
        results[method][seed] = train.train_and_evaluate(
            run_config, run_dir(_WORKDIR.value, method, seed))
  summary = summarize(results)
  with open(os.path.join(_WORKDIR.value, 'comparison.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f'\n{config.dataset.name} / {config.model.name}, split '
        f'{config.dataset.eval_split}:\n' + format_summary(summary))


if __name__ == '__main__':
  app.run(main)
