"""The compare command's grid: methods x sweep points x seeds, one run each.

`parse_sweep` reads `--sweep`'s `key=v1,v2,...` into typed values and `grid`
makes their full grid; `run_settings` is one run's config. `summarize_grid`
reads each point's finished runs (grid_runs) and trains the others, with
their diagnostics and, asked for, their map distance scored; `write` writes
WORKDIR/comparison.{json,md} and the plots, and prints the tables.
"""

import contextlib
import io
import itertools
import json
import os

import numpy as np

from danil_jax.experiments import comparison
from danil_jax.experiments import grid_runs
from danil_jax.experiments import mechanism
from danil_jax.runtime import cli

SWEEP_PLOT = 'sweep.png'
DIFFERENCES_PLOT = 'differences.png'
MECHANISM_PLOT = 'mechanism.png'  # with the map distance and a sweep
COMPARISON = 'comparison'  # .json and .md


def parse_sweep(texts: list[str], config) -> list[tuple[str, list]]:
  """['a.b=1,2;c=x'] -> [('a.b', [(text, value), ...]), ('c', ...)].

  Values are cast to the type of the key in `config` (grid_runs.parse_value);
  unknown keys, the `method` and `seed` keys (given by --methods and
  --seeds) and values of the wrong type are errors naming the key.
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
      parent, name = grid_runs.parent_and_name(config, key)
    except KeyError:
      raise ValueError(f'--sweep {key}: no such config key') from None
    current = parent[name]
    if hasattr(current, 'keys'):
      raise ValueError(f'--sweep {key}: a config section, not a value')
    parsed = []
    for text in (v.strip() for v in values.split(',')):
      try:
        parsed.append((text, grid_runs.parse_value(text, current, key)))
      except ValueError:
        raise ValueError(f'--sweep {key}={text}: expected a '
                         f'{type(current).__name__} like {current!r}'
                         ) from None
    sweep.append((key, parsed))
  return sweep


def grid(sweep) -> list[tuple[tuple[str, str, object], ...]]:
  """Every combination of the swept values, each once: ((key, text, value),
  ...) in sweep order; [()] without a sweep."""
  return list(itertools.product(
      *[[(key, text, value) for text, value in values]
        for key, values in sweep]))


def point_label(point) -> str:
  return ' '.join(f'{key}={text}' for key, text, _ in point)


def run_settings(config, method: str, seed: int, point):
  """`config` for one run: its method, seed and the swept values that apply
  to the method."""
  settings = config.copy_and_resolve_references()
  settings.unlock()
  comparison.set_method(settings, method)
  settings.seed = seed
  for key, _, value in point:
    if comparison.applies(key, method):
      parent, name = grid_runs.parent_and_name(settings, key)
      parent[name] = value
  settings.lock()
  return settings


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


def summarize_grid(config, workdir: str, *, methods, seeds, sweep,
                   only_finished: bool = False,
                   map_distance: bool = False) -> list[tuple[tuple, dict]]:
  """(point, comparison.summarize of its runs) for each sweep point whose
  runs all finished; the others are named and left out. Runs not finished
  are trained first unless `only_finished`; a run shared by several points
  (one whose method reads none of the keys they differ in) once."""
  finished = {}  # run dir -> results (None: unfinished)
  summaries = []
  for point in grid(sweep):
    results = {}
    for method in methods:
      results[method] = {}
      for seed in seeds:
        directory = grid_runs.run_dir(workdir, method, seed, point)
        if directory not in finished:
          finished[directory] = _finish(
              run_settings(config, method, seed, point), directory,
              label=f'{method}, seed {seed} {point_label(point)}',
              only_finished=only_finished, map_distance=map_distance)
        if finished[directory] is not None:
          results[method][seed] = finished[directory]
    if all(results.values()):
      summaries.append((point, comparison.summarize(results)))
    else:
      grid_runs.announce(f'--- {point_label(point)}: no finished run of '
                         f'{[m for m, r in results.items() if not r]}, '
                         'left out')
  return summaries


def _finish(settings, directory: str, *, label: str, only_finished: bool,
            map_distance: bool) -> dict | None:
  """A run's final metrics and diagnostics: read if it finished before, else
  trained (None if `only_finished`)."""
  report = grid_runs.finished_report(directory, settings)
  if report or not only_finished:
    grid_runs.announce(f'--- {label}' + (' (finished before)' if report
                                         else ''))
  if report is None and only_finished:
    return None
  if report is None:
    report = grid_runs.train(settings, directory)
  extra = diagnostics(directory)
  if map_distance:
    with cli.errors_exit():
      extra.update(map_scalars(directory, settings, report))
  return dict(report, **extra)


def write(config, workdir: str, sweep, summaries, *,
          map_distance: bool = False) -> None:
  """WORKDIR/comparison.{json,md} and differences.png, the tables on stdout
  and, with a sweep, WORKDIR/sweep.png (and mechanism.png with the map
  distance)."""
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
  if map_distance:
    plot += ', ' + mechanism.plot(summaries, sweep,
                                  os.path.join(workdir, MECHANISM_PLOT))
  print(f'\nwrote {plot} and {forest}')
