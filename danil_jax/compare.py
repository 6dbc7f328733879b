"""Methods compared over seeds, optionally swept over config values.

  python -m danil_jax.compare --config=configs/demo.py --workdir=/tmp/cmp \
      --methods=base,control,danil --seeds=0,1,2 [--config.num_epochs=3 ...] \
      [--sweep='danil.reduction=per_image,batch;danil.lam=1e-5,1e-3,1e-1']
      [--only_finished] [--map_distance]

Trains every (method, sweep point, seed) into its own directory under
WORKDIR (a rerun reuses the finished runs there whose config agrees on every
key that changes the result, and resumes the others:
danil_jax.experiments.compare_grid and grid_runs),
then prints and writes WORKDIR/comparison.{json,md}: per method the mean and
sample standard deviation over seeds, and the paired difference to the first
method on the same seeds with its 95% confidence interval and the smallest
difference the seeds can detect (danil_jax.experiments.paired_stats), drawn in
WORKDIR/differences.png (each interval beside +- that difference); with a sweep, one
such table per point of the grid and WORKDIR/sweep.png, each metric against
the swept value with error bars. The method `control` trains DANIL with
lam = 0 (whatever `danil.lam` a sweep gives): its difference to Base is the
protocol's noise floor, measured beside the comparison.

`--map_distance` also measures DANIL's mechanism on every finished run: each
eval-split image's ||A+ - A-||^2 with its last model (`evaluate
--map_distance`, written into the run's eval/<split>_last[_<tta>]/ and read
from there on a rerun), and pairs the log10 of its median over all,
misclassified and near-miss images like the metrics; with a sweep,
WORKDIR/mechanism.png draws those and macro-F1 against the swept value
beside the control's band (danil_jax.experiments.mechanism).

`--sweep` takes `key=v1,v2,...` for any config key (repeat the flag or join
keys with ';'; several keys give their full grid). A key under a method's
own section (`danil.*`, `ohem.*`) does not change the other methods' runs,
so those are trained once and shared by every value of it. One run per
method says nothing: DANIL's effect at the paper's lambda is often smaller
than the spread between seeds.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from danil_jax.experiments import compare_grid
from danil_jax.experiments import comparison
from danil_jax.runtime import cli
from danil_jax.runtime import multihost

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of all the runs.')
_METHODS = flags.DEFINE_list(
    'methods', ['base', 'danil'], 'Methods to compare; the first is the '
    f'reference. {comparison.CONTROL!r}: DANIL with lam = 0, the noise floor.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed).')
_SWEEP = flags.DEFINE_multi_string(
    'sweep', [], "'key=v1,v2,...' of any config key; repeat the flag or join "
    "keys with ';' for their full grid.")
_ONLY_FINISHED = flags.DEFINE_bool(
    'only_finished', False, 'Train nothing: summarise the runs already '
    'finished (e.g. while a sweep is still running elsewhere).')
_MAP_DISTANCE = flags.DEFINE_bool(
    'map_distance', False, "Also score each run's ||A+ - A-||^2 on the eval "
    'split (evaluate --map_distance) and pair its log10 medians.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)


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
  try:
    sweep = compare_grid.parse_sweep(_SWEEP.value, config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  cli.setup(config)  # before anything touches the JAX backend
  summaries = compare_grid.summarize_grid(
      config, _WORKDIR.value, methods=_METHODS.value, seeds=seeds,
      sweep=sweep, only_finished=_ONLY_FINISHED.value,
      map_distance=_MAP_DISTANCE.value)
  if not summaries:
    raise app.UsageError('no finished runs to summarise')
  if multihost.is_chief():
    compare_grid.write(config, _WORKDIR.value, sweep, summaries,
                       map_distance=_MAP_DISTANCE.value)


if __name__ == '__main__':
  cli.run(main)
