"""Methods compared over seeds, optionally swept over config values.

  python -m danil_jax.compare --config=configs/demo.py --workdir=/tmp/cmp \
      --methods=base,control,danil --seeds=0,1,2 [--config.num_epochs=3 ...] \
      [--sweep='danil.reduction=per_image,batch;danil.lam=1e-5,1e-3,1e-1']
      [--only_finished] [--map_distance]

Trains every (method, sweep point, seed) into its own directory under
WORKDIR (a rerun reuses the finished runs there and resumes the others),
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

import contextlib
import io
import itertools
import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from danil_jax.experiments import comparison
from danil_jax.experiments import mechanism
from danil_jax.runtime import cli
from danil_jax.runtime import run_config

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

SWEEP_PLOT = 'sweep.png'
DIFFERENCES_PLOT = 'differences.png'
MECHANISM_PLOT = 'mechanism.png'  # with --map_distance and a sweep
COMPARISON = 'comparison'  # .json and .md


def parse_sweep(texts: list[str], config) -> list[tuple[str, list]]:
  """['a.b=1,2;c=x'] -> [('a.b', [(text, value), ...]), ('c', ...)].

  Values are cast to the type of the key in `config`; unknown keys, the
  `method` and `seed` keys (given by --methods and --seeds) and values of the
  wrong type are errors naming the key.
  """
  sweep = []
  for part in (p.strip() for text in texts for p in text.split(';')):
    if not part:
      continue
    key, sep, values = part.partition('=')
    key = key.strip()
    if not sep or not values.strip():
      raise ValueError(f"--sweep {part!r}: expected 'key=v1,v2,...'")
    if key in ('method', 'seed'):
      raise ValueError(f'--sweep {key}: use --{key}s instead')
    if key in (k for k, _ in sweep):
      raise ValueError(f'--sweep {key}: given twice')
    try:
      current = _get(config, key)
    except (KeyError, AttributeError):
      raise ValueError(f'--sweep {key}: no such config key') from None
    if isinstance(current, dict) or hasattr(current, 'keys'):
      raise ValueError(f'--sweep {key}: a config section, not a value')
    parsed = []
    for text in (v.strip() for v in values.split(',')):
      try:
        parsed.append((text, _cast(text, current)))
      except ValueError:
        raise ValueError(f'--sweep {key}={text}: expected a '
                         f'{type(current).__name__} like {current!r}'
                         ) from None
    sweep.append((key, parsed))
  return sweep


def _get(config, key: str):
  for name in key.split('.'):
    config = config[name]
  return config


def _cast(text: str, current):
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false'):
      raise ValueError(text)
    return text.lower() == 'true'
  if current is None:
    return text
  return type(current)(text)


def grid(sweep) -> list[tuple[tuple[str, str, object], ...]]:
  """Every combination of the swept values, each once: ((key, text, value),
  ...) in sweep order; [()] without a sweep."""
  return list(itertools.product(
      *[[(key, text, value) for text, value in values]
        for key, values in sweep]))


def run_dir(workdir: str, method: str, seed: int, point=()) -> str:
  """WORKDIR/<method>[_<key>=<value>...]_seed<seed>, naming only the swept
  keys that change this method's run."""
  swept = ''.join(f'_{key}={text}' for key, text, _ in point
                  if comparison.applies(key, method))
  return os.path.join(workdir, f'{method}{swept}_seed{seed}')


def point_label(point) -> str:
  return ' '.join(f'{key}={text}' for key, text, _ in point)


def finished_report(workdir: str, config) -> dict | None:
  """The final metrics of a finished run of `config`, else None.

  The saved config must equal `config` but for the sections of the methods
  the run does not use (a Base run is the same whatever `danil.*` holds).
  """
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      saved = json.load(f)
    with open(os.path.join(workdir, 'final_metrics.json')) as f:
      report = json.load(f)
  except (OSError, ValueError):
    return None
  unused = [s for s in comparison.METHOD_SECTIONS if s != config.method]
  if any(run_config.differences(saved, run_config.as_plain(config),
                                ignore=unused)):
    return None
  return report


def diagnostics(workdir: str) -> dict:
  """Median over a run's logged train steps of each DIAGNOSTICS value."""
  from danil_jax.runtime import run_log  # pylint: disable=g-import-not-at-top
  records = [r for r in run_log.MetricsLog(workdir).read()
             if r.get('kind') == 'train']
  return {key: float(np.median([r[key] for r in records if key in r]))
          for key in comparison.DIAGNOSTICS
          if any(key in r for r in records)}


def map_scalars(workdir: str, config, report: dict) -> dict:
  """map_distance.scalars of the run's last model on its eval split: read
  from the evaluation folder where an evaluation of the same step wrote
  them, else scored there now (trained_run.evaluate_run)."""
  # pylint: disable=g-import-not-at-top
  from danil_jax.evaluation import map_distance
  from danil_jax.evaluation import scoring
  from danil_jax.evaluation import trained_run
  # pylint: enable=g-import-not-at-top
  split = config.dataset.eval_split
  path = os.path.join(workdir, 'eval', scoring.output_name(
      split, 'last', config.eval.tta), 'metrics.json')
  try:
    with open(path) as f:
      metrics = json.load(f)
  except (OSError, ValueError):
    metrics = {}
  if map_distance.KEY not in metrics or metrics.get('step') != report.get(
      'step'):
    with contextlib.redirect_stdout(io.StringIO()):  # its report, not ours
      _, metrics = trained_run.evaluate_run(workdir, split, 'last',
                                            map_distance=True)
  return map_distance.scalars(metrics[map_distance.KEY])


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
    sweep = parse_sweep(_SWEEP.value, config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  cli.setup(config)  # before anything touches the JAX backend
  import jax  # pylint: disable=g-import-not-at-top
  is_chief = jax.process_index() == 0
  workdir = _WORKDIR.value
  finished = {}  # run dir -> results, so shared runs are trained once
  summaries = []
  for point in grid(sweep):
    results = _point_results(config, workdir, seeds, point, finished,
                             is_chief)
    if all(results.values()):
      summaries.append((point, comparison.summarize(results)))
    elif is_chief:
      print(f'--- {point_label(point)}: no finished run of '
            f'{[m for m, r in results.items() if not r]}, left out')
  if not summaries:
    raise app.UsageError('no finished runs to summarise')
  if is_chief:
    _write_comparison(config, workdir, sweep, summaries)


def _point_results(config, workdir: str, seeds, point, finished: dict,
                   is_chief: bool) -> dict[str, dict[int, dict]]:
  """{method: {seed: results}} of one sweep point's finished runs, the others
  trained first unless --only_finished. `finished` maps each run directory
  already seen to its results (None: unfinished), so points share runs."""
  results = {}
  for method in _METHODS.value:
    results[method] = {}
    for seed in seeds:
      directory = run_dir(workdir, method, seed, point)
      if directory not in finished:
        finished[directory] = _finish(
            _run_settings(config, method, seed, point), directory,
            label=f'{method}, seed {seed} {point_label(point)}',
            is_chief=is_chief)
      if finished[directory] is not None:
        results[method][seed] = finished[directory]
  return results


def _run_settings(config, method: str, seed: int, point):
  """`config` for one run: its method, seed and the swept values that apply
  to the method."""
  settings = config.copy_and_resolve_references()
  settings.unlock()
  comparison.set_method(settings, method)
  settings.seed = seed
  for key, _, value in point:
    if comparison.applies(key, method):
      parent, _, name = key.rpartition('.')
      (_get(settings, parent) if parent else settings)[name] = value
  settings.lock()
  return settings


def _finish(settings, directory: str, *, label: str,
            is_chief: bool) -> dict | None:
  """A run's final metrics and diagnostics: read if it finished before, else
  trained (None with --only_finished)."""
  from danil_jax.runtime import cli  # pylint: disable=g-import-not-at-top
  from danil_jax.trainer import train  # pylint: disable=g-import-not-at-top
  report = finished_report(directory, settings)
  if is_chief and (report or not _ONLY_FINISHED.value):
    print(f'--- {label}' + (' (finished before)' if report else ''),
          flush=True)
  if report is None and _ONLY_FINISHED.value:
    return None
  if report is None:
    with cli.errors_exit():
      report = train.train_and_evaluate(settings, directory)
  extra = diagnostics(directory)
  if _MAP_DISTANCE.value:
    with cli.errors_exit():
      extra.update(map_scalars(directory, settings, report))
  return dict(report, **extra)


def _write_comparison(config, workdir: str, sweep, summaries) -> None:
  """WORKDIR/comparison.{json,md}, the tables on stdout and, with a sweep,
  WORKDIR/sweep.png."""
  header = (f'\n{config.dataset.name} / {config.model.name}, split '
            f'{config.dataset.eval_split}')
  with open(os.path.join(workdir, COMPARISON + '.md'), 'w') as f:
    f.write(comparison.to_markdown(summaries, header.strip()))
  forest = comparison.plot_differences(
      summaries, os.path.join(workdir, DIFFERENCES_PLOT))
  if not sweep:
    with open(os.path.join(workdir, COMPARISON + '.json'), 'w') as f:
      json.dump(summaries[0][1], f, indent=2)
    print(header + ':\n' + comparison.format_summary(summaries[0][1]))
    print(f'\nwrote {forest}')
    return
  with open(os.path.join(workdir, COMPARISON + '.json'), 'w') as f:
    json.dump(dict(sweep=[[key, [t for t, _ in values]]
                          for key, values in sweep],
                   points=[dict(values={k: t for k, t, _ in point},
                                summary=summary)
                           for point, summary in summaries]), f, indent=2)
  for point, summary in summaries:
    print(f'{header}, {point_label(point)}:\n'
          + comparison.format_summary(summary))
  plot = comparison.plot_sweep(summaries, sweep,
                               os.path.join(workdir, SWEEP_PLOT))
  if _MAP_DISTANCE.value:
    plot += ', ' + mechanism.plot(summaries, sweep,
                                  os.path.join(workdir, MECHANISM_PLOT))
  print(f'\nwrote {plot} and {forest}')

if __name__ == '__main__':
  cli.run(main)
