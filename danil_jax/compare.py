"""Methods compared over seeds, optionally swept over config values.

  python -m danil_jax.compare --config=configs/demo.py --workdir=/tmp/cmp \
      --methods=base,danil --seeds=0,1,2 [--config.num_epochs=3 ...] \
      [--sweep='danil.reduction=per_image,batch;danil.lam=1e-5,1e-3,1e-1']
      [--only_finished]

Trains every (method, sweep point, seed) into its own directory under
WORKDIR (a rerun reuses the finished runs there and resumes the others),
then prints and writes WORKDIR/comparison.json: per method the mean and
sample standard deviation over seeds, and the paired difference to the first
method on the same seeds; with a sweep, one such table per point of the grid
and WORKDIR/sweep.png, each metric against the swept value with error bars.

`--sweep` takes `key=v1,v2,...` for any config key (repeat the flag or join
keys with ';'; several keys give their full grid). A key under a method's
own section (`danil.*`, `ohem.*`) does not change the other methods' runs,
so those are trained once and shared by every value of it. One run per
method says nothing: DANIL's effect at the paper's lambda is often smaller
than the spread between seeds.
"""

import itertools
import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from danil_jax import run_config

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of all the runs.')
_METHODS = flags.DEFINE_list('methods', ['base', 'danil'],
                             'Methods to compare; the first is the reference.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed).')
_SWEEP = flags.DEFINE_multi_string(
    'sweep', [], "'key=v1,v2,...' of any config key; repeat the flag or join "
    "keys with ';' for their full grid.")
_ONLY_FINISHED = flags.DEFINE_bool(
    'only_finished', False, 'Train nothing: summarise the runs already '
    'finished (e.g. while a sweep is still running elsewhere).')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)

METRICS = ('macro_f1', 'accuracy')
# Read from each DANIL run's metrics.jsonl: whether the term acts at all.
DIAGNOSTICS = ('distraction_grad_ratio', 'distraction_grad_share')
# Config sections only one method reads.
_METHOD_SECTIONS = ('danil', 'ohem')
SWEEP_PLOT = 'sweep.png'


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


def applies(key: str, method: str) -> bool:
  """Whether config `key` can change a `method` run."""
  section = key.split('.')[0]
  return section not in _METHOD_SECTIONS or section == method


def run_dir(workdir: str, method: str, seed: int, point=()) -> str:
  """WORKDIR/<method>[_<key>=<value>...]_seed<seed>, naming only the swept
  keys that change this method's run."""
  swept = ''.join(f'_{key}={text}' for key, text, _ in point
                  if applies(key, method))
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
  unused = [s for s in _METHOD_SECTIONS if s != config.method]
  if any(run_config.differences(saved, run_config.as_plain(config),
                                ignore=unused)):
    return None
  return report


def diagnostics(workdir: str) -> dict:
  """Median over a run's logged train steps of each DIAGNOSTICS value."""
  from danil_jax import run_log  # pylint: disable=g-import-not-at-top
  records = [r for r in run_log.MetricsLog(workdir).read()
             if r.get('kind') == 'train']
  return {key: float(np.median([r[key] for r in records if key in r]))
          for key in DIAGNOSTICS if any(key in r for r in records)}


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
    for key in DIAGNOSTICS:  # DANIL runs' medians over their logged steps
      values = [results[method][s][key] for s in entry['seeds']
                if key in results[method][s]]
      if values:
        entry[key] = dict(
            mean=float(np.mean(values)),
            sd=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            values=values)
    summary[method] = entry
  return summary


def format_summary(summary: dict) -> str:
  methods = list(summary)
  ratio = DIAGNOSTICS[0]
  lines = [f"{'method':<8} {'seeds':>5}  " + '  '.join(
      f'{m:>34}' for m in METRICS) + f"  {'grad ratio':>10}"]
  for method in methods:
    entry = summary[method]
    cells = []
    for metric in METRICS:
      value = entry[metric]
      cell = f"{value['mean']:.4f} +- {value['sd']:.4f}"
      paired = value.get(f'minus_{methods[0]}')
      if paired:
        cell += f" ({paired['mean']:+.4f} +- {paired['sd']:.4f})"
      cells.append(f'{cell:>34}')
    cells.append(f"{entry[ratio]['mean']:>10.3g}" if ratio in entry
                 else f"{'-':>10}")
    lines.append(f"{method:<8} {len(entry['seeds']):>5}  " + '  '.join(cells))
  lines.append(f'mean +- sample sd over seeds; (+x +- s): mean and sample sd '
               f'of the paired difference to {methods[0]} on the same seeds; '
               'grad ratio: '
               '||g_d|| / ||g_ce||, median over logged steps, mean over seeds.')
  return '\n'.join(lines)


def plot_sweep(summaries: list[tuple[tuple, dict]], sweep, path: str) -> str:
  """Each metric (and DANIL's grad ratio) against the last numeric swept key,
  mean +- sd over seeds, one line per method and value of the other keys."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  numeric = [i for i, (_, values) in enumerate(sweep)
             if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    for _, v in values)]
  x_index = numeric[-1] if numeric else len(sweep) - 1
  x_key, x_values = sweep[x_index]
  positions = {text: (value if numeric else i)
               for i, (text, value) in enumerate(x_values)}
  series = {}  # (method, other keys' texts) -> [(x, entry)]
  for point, summary in summaries:
    for method, entry in summary.items():
      others = tuple(f'{k}={t}' for i, (k, t, _) in enumerate(point)
                     if i != x_index and applies(k, method))
      series.setdefault((method, others), {})[point[x_index][1]] = entry
  values = list(positions.values())
  log_x = bool(numeric) and min(values) > 0 and max(values) / min(values) >= 100
  span = (max(values) - min(values)) or abs(values[0]) or 1.0
  reference = next(iter(summaries[0][1]))
  paired = f'minus_{reference}'
  panels = [(m, None) for m in METRICS] + [
      (METRICS[0], paired), (DIAGNOSTICS[0], None)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4))
  for ax, (key, field) in zip(axes, panels):
    for index, ((method, others), by_x) in enumerate(sorted(series.items())):
      points = [(positions[t], e[key][field] if field else e[key])
                for t, e in by_x.items()
                if key in e and (field is None or field in e[key])]
      if not points:
        continue
      xs, cells = zip(*sorted(points))
      # Side by side rather than on top of each other.
      shift = index - (len(series) - 1) / 2
      xs = [x * 1.06 ** shift if log_x else x + 0.012 * span * shift
            for x in xs]
      ax.errorbar(xs, [c['mean'] for c in cells],
                  yerr=[c.get('sd', 0.0) for c in cells], marker='o',
                  capsize=3, color=f'C{index}', alpha=0.85,
                  label=' '.join((method,) + others))
    ax.set_xlabel(x_key)
    if log_x:
      ax.set_xscale('log')
    if not numeric:
      ax.set_xticks(values, list(positions))
    if key == DIAGNOSTICS[0]:
      ax.set_yscale('log')
      ax.set_title('||g_d|| / ||g_ce|| (median over steps)', fontsize=10)
    elif field == paired:
      ax.axhline(0.0, color='gray', lw=0.8)
      ax.set_title(f'{key} minus {reference}, paired (mean +- sd)',
                   fontsize=10)
    else:
      ax.set_title(f'{key} (mean +- sd over seeds)', fontsize=10)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


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
  from danil_jax import cli  # pylint: disable=g-import-not-at-top
  cli.setup(config)  # before anything touches the JAX backend
  import jax  # pylint: disable=g-import-not-at-top
  from danil_jax import train  # pylint: disable=g-import-not-at-top
  is_chief = jax.process_index() == 0
  workdir = _WORKDIR.value
  finished = {}  # run dir -> results, so shared runs are trained once
  summaries = []
  for point in grid(sweep):
    results = {}
    for method in _METHODS.value:
      results[method] = {}
      for seed in seeds:
        directory = run_dir(workdir, method, seed, point)
        if directory not in finished:
          run_settings = config.copy_and_resolve_references()
          run_settings.unlock()
          run_settings.method, run_settings.seed = method, seed
          for key, _, value in point:
            if applies(key, method):
              parent, _, name = key.rpartition('.')
              (_get(run_settings, parent) if parent else run_settings)[name] = (
                  value)
          run_settings.lock()
          report = finished_report(directory, run_settings)
          if is_chief and (report or not _ONLY_FINISHED.value):
            print(f'--- {method}, seed {seed} {point_label(point)}'
                  + (' (finished before)' if report else ''), flush=True)
          if report is None and _ONLY_FINISHED.value:
            finished[directory] = None
          elif report is None:
            with cli.errors_exit():
              report = train.train_and_evaluate(run_settings, directory)
          if report is not None:
            finished[directory] = dict(report, **diagnostics(directory))
        if finished[directory] is not None:
          results[method][seed] = finished[directory]
    if all(results.values()):
      summaries.append((point, summarize(results)))
    elif is_chief:
      print(f'--- {point_label(point)}: no finished run of '
            f'{[m for m, r in results.items() if not r]}, left out')
  if not summaries:
    raise app.UsageError('no finished runs to summarise')
  if not is_chief:
    return
  header = (f'\n{config.dataset.name} / {config.model.name}, split '
            f'{config.dataset.eval_split}')
  if not sweep:
    with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
      json.dump(summaries[0][1], f, indent=2)
    print(header + ':\n' + format_summary(summaries[0][1]))
    return
  with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
    json.dump(dict(sweep=[[key, [t for t, _ in values]]
                          for key, values in sweep],
                   points=[dict(values={k: t for k, t, _ in point},
                                summary=summary)
                           for point, summary in summaries]), f, indent=2)
  for point, summary in summaries:
    print(f'{header}, {point_label(point)}:\n' + format_summary(summary))
  print(f'\nwrote {plot_sweep(summaries, sweep, os.path.join(workdir, SWEEP_PLOT))}')


if __name__ == '__main__':
  app.run(main)
