"""Methods compared over seeds: statistics, a table and a sweep plot.

Per method: the mean and sample standard deviation over seeds of each final
metric, and the paired difference to the first method on the same seeds with
its 95% confidence interval, p-value and the smallest difference the seeds
could detect (danil_jax.experiments.paired_stats); DANIL's gradient ratio as
logged; with the map distance scored (`compare --map_distance`), DANIL's
mechanism beside them: the log10 median of ||A+ - A-||^2 over the test
images, the misclassified ones and the near misses
(danil_jax.evaluation.map_distance), paired like the metrics.
`plot_sweep` draws them against a swept config value (danil_jax.compare).

The `control` method is DANIL's step with lam = 0: the gradient of Base up to
float rounding, trained through DANIL's code path. Its difference to Base is
the noise floor of the protocol, the part of any difference that seeds,
rounding and the chaos of training produce without any method.
"""

import numpy as np

from danil_jax.evaluation import map_distance
from danil_jax.experiments import paired_stats
from danil_jax.experiments import paper_numbers
from danil_jax.method import registry

METRICS = ('macro_f1', 'accuracy')
# Summarised like METRICS where every seed's run has them (ece_calibrated and
# brier only with a validation split; danil_jax/evaluation/calibration.py).
CALIBRATION = ('ece', 'ece_calibrated', 'brier')
# Likewise, where every seed's run had its maps scored; paired in the table
# of differences beside METRICS.
MAP_DISTANCE = map_distance.SCALARS
OPTIONAL = CALIBRATION + MAP_DISTANCE
# Read from each DANIL run's metrics.jsonl: whether the term acts at all.
DIAGNOSTICS = ('distraction_grad_ratio', 'distraction_grad_share')
CONTROL = paper_numbers.CONTROL


def applies(key: str, method: str) -> bool:
  """Whether config `key` can change a `method` run (the control's lam is
  fixed at 0, so no `danil.*` key is swept for it)."""
  section = key.split('.')[0]
  own = registry.METHODS[method].section if method in registry.METHODS else ''
  return section not in registry.sections() or section == own


def set_method(config, method: str) -> None:
  """Sets config.method of an unlocked config; `control` trains DANIL with
  lam = 0 and the config's other `danil.*` settings."""
  if method == CONTROL:
    config.method = 'danil'
    config.danil.lam = 0.0
  else:
    config.method = method


def summarize(results: dict[str, dict[int, dict]]) -> dict:
  """{method: {seed: final metrics}} -> mean, sd and paired differences.

  The standard deviation is the sample one (ddof=1); the differences pair each
  method with the first one on the seeds both have (`paired_stats.describe`:
  mean, sd, ci95, p, detectable, reading; None without a common seed).
  """
  methods = list(results)
  reference = results[methods[0]]
  summary = {}
  for method in methods:
    entry = dict(seeds=sorted(results[method]))
    for metric in METRICS + OPTIONAL:
      if metric in OPTIONAL and not all(
          results[method][s].get(metric) is not None for s in entry['seeds']):
        continue
      values = np.array([results[method][s][metric] for s in entry['seeds']])
      entry[metric] = dict(
          mean=float(values.mean()),
          sd=float(values.std(ddof=1)) if len(values) > 1 else float('nan'),
          values=values.tolist())
      if method != methods[0]:
        entry[metric][f'minus_{methods[0]}'] = paired_stats.paired(
            {s: results[method][s][metric] for s in entry['seeds']},
            {s: r[metric] for s, r in reference.items()
             if r.get(metric) is not None})
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
  """The console table of `summarize`'s dict: means, then the paired
  differences to the reference with their interval and detectable effect."""
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
      if paired and paired['sd'] is not None:
        cell += f" ({paired['mean']:+.4f} +- {paired['sd']:.4f})"
      elif paired:
        cell += f" ({paired['mean']:+.4f})"
      cells.append(f'{cell:>34}')
    cells.append(f"{entry[ratio]['mean']:>10.3g}" if ratio in entry
                 else f"{'-':>10}")
    lines.append(f"{method:<8} {len(entry['seeds']):>5}  " + '  '.join(cells))
  for group in (CALIBRATION, MAP_DISTANCE):
    lines += _optional_lines(summary, group)
  lines.append(f'mean +- sample sd over seeds; (+x +- s): mean and sample sd '
               f'of the paired difference to {methods[0]} on the same seeds; '
               'grad ratio: '
               '||g_d|| / ||g_ce||, median over logged steps, mean over seeds.')
  rows = difference_rows(summary, pm='+-')
  if rows:
    lines += ['', f'Paired difference to {methods[0]} on the same seeds:',
              _text_table(('method', 'metric') + paired_stats.HEADERS, rows),
              paired_stats.LEGEND.format(pm='+-')]
    floor = noise_floor(summary)
    if floor:
      lines.append(floor)
  return '\n'.join(lines)


def _optional_lines(summary: dict, group) -> list[str]:
  """The rows of the `group` metrics some method has, as in the table."""
  methods = list(summary)
  present = [m for m in group if any(m in summary[n] for n in methods)]
  lines = []
  if present:
    lines.append(f"{'':<8} {'':>5}  " + '  '.join(f'{m:>34}'
                                                  for m in present))
    for method in methods:
      cells = []
      for metric in present:
        value = summary[method].get(metric)
        cell = '-' if value is None else (
            f"{value['mean']:.4f} +- {value['sd']:.4f}")
        paired = (value or {}).get(f'minus_{methods[0]}')
        if paired and paired['sd'] is not None:
          cell += f" ({paired['mean']:+.4f} +- {paired['sd']:.4f})"
        cells.append(f'{cell:>34}')
      lines.append(f"{method:<8} {'':>5}  " + '  '.join(cells))
  return lines


def difference_rows(summary: dict, pm: str = '±') -> list[list[str]]:
  """[method, metric, *paired_stats.HEADERS] per method but the reference
  and metric (METRICS, then MAP_DISTANCE where scored) with a paired
  difference."""
  reference = next(iter(summary))
  rows = []
  for method, entry in summary.items():
    for metric in METRICS + MAP_DISTANCE:
      stat = entry.get(metric, {}).get(f'minus_{reference}')
      if stat:
        rows.append([method, metric] + paired_stats.cells(stat, pm))
  return rows


def noise_floor(summary: dict) -> str | None:
  """A sentence on the control's difference to the reference, if both ran:
  in METRICS[0], then in the map distance where it was scored."""
  reference = next(iter(summary))
  if reference == CONTROL or CONTROL not in summary:
    return None
  sentences = []
  for metric in (METRICS[0], MAP_DISTANCE[0]):
    stat = summary[CONTROL].get(metric, {}).get(f'minus_{reference}')
    if not stat or stat['detectable'] is None:
      continue
    sentences.append(
        f'{metric} sd {stat["sd"]:.4f} over {stat["n"]} pairs (a difference '
        f'below {stat["detectable"]:.4f} would likely be missed)')
  if not sentences:
    return None
  return (f'Noise floor: {CONTROL} (DANIL with lam = 0, the gradient of '
          f"{reference} up to rounding) differs from {reference} by "
          + '; by '.join(sentences) + '.')


def _text_table(header, rows) -> str:
  widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
  return '\n'.join('  '.join(f'{c:<{w}}' for c, w in zip(row, widths))
                   .rstrip() for row in [header] + rows)


def _markdown_table(header, rows) -> list[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(row) + ' |' for row in rows])


def to_markdown(summaries: list[tuple[tuple, dict]], title: str) -> str:
  """Markdown of every sweep point's summary: a table of means over seeds
  and one of the paired differences to the reference, one row per point and
  method (the swept values in the first columns)."""
  keys = [key for key, _, _ in summaries[0][0]]
  reference = next(iter(summaries[0][1]))
  means, differences = [], []
  for point, summary in summaries:
    values = [text for _, text, _ in point]
    for method, entry in summary.items():
      cells = [f"{entry[m]['mean']:.4f}" + (
          f" ± {entry[m]['sd']:.4f}" if np.isfinite(entry[m]['sd']) else '')
               for m in METRICS]
      means.append(values + [method, str(len(entry['seeds']))] + cells)
    differences += [values + row for row in difference_rows(summary)]
  lines = [f'### {title}', '',
           'Mean ± sample sd over seeds:', '']
  lines += _markdown_table(keys + ['method', 'seeds'] + list(METRICS), means)
  if differences:
    lines += ['', f'Paired difference to {reference} on the same seeds:', '']
    lines += _markdown_table(
        keys + ['method', 'metric'] + list(paired_stats.HEADERS), differences)
    lines += ['', paired_stats.LEGEND.format(pm='±')]
  floors = []
  for point, summary in summaries:
    floor = noise_floor(summary)
    where = ' '.join(f'{k}={t}' for k, t, _ in point if applies(k, CONTROL))
    if floor and (where, floor) not in floors:
      floors.append((where, floor))
  lines += [''] + [f'{where}: {floor}' if where else floor
                   for where, floor in floors] if floors else []
  return '\n'.join(lines) + '\n'


def sweep_series(summaries: list[tuple[tuple, dict]], sweep):
  """(x key, {value text: x position}, whether x is numeric,
  {(method, other keys' texts): {x value text: summary entry}}).

  The x axis is the last numeric swept key, else the last key at positions
  0, 1, ...
  """
  numeric = [i for i, (_, values) in enumerate(sweep)
             if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    for _, v in values)]
  x_index = numeric[-1] if numeric else len(sweep) - 1
  x_key, x_values = sweep[x_index]
  positions = {text: (value if numeric else i)
               for i, (text, value) in enumerate(x_values)}
  series = {}
  for point, summary in summaries:
    for method, entry in summary.items():
      others = tuple(f'{k}={t}' for i, (k, t, _) in enumerate(point)
                     if i != x_index and applies(k, method))
      series.setdefault((method, others), {})[point[x_index][1]] = entry
  return x_key, positions, bool(numeric), series


def _title_panel(ax, key: str, field: str | None, reference: str) -> None:
  if key == DIAGNOSTICS[0]:
    ax.set_yscale('log')
    ax.set_title('||g_d|| / ||g_ce|| (median over steps)', fontsize=10)
  elif field == f'minus_{reference}':
    ax.axhline(0.0, color='gray', lw=0.8)
    ax.set_title(f'{key} minus {reference}, paired (mean +- sd)',
                 fontsize=10)
  else:
    ax.set_title(f'{key} (mean +- sd over seeds)', fontsize=10)


def plot_sweep(summaries: list[tuple[tuple, dict]], sweep, path: str) -> str:
  """Each metric (and DANIL's grad ratio) against the last numeric swept key,
  mean +- sd over seeds, one line per method and value of the other keys."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  x_key, positions, numeric, series = sweep_series(summaries, sweep)
  values = list(positions.values())
  log_x = numeric and min(values) > 0 and max(values) / min(values) >= 100
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
                if key in e and (field is None or e[key].get(field))]
      if not points:
        continue
      xs, cells = zip(*sorted(points))
      # Side by side rather than on top of each other.
      shift = index - (len(series) - 1) / 2
      xs = [x * 1.06 ** shift if log_x else x + 0.012 * span * shift
            for x in xs]
      ax.errorbar(xs, [c['mean'] for c in cells],
                  yerr=[c.get('sd') or 0.0 for c in cells], marker='o',
                  capsize=3, color=f'C{index}', alpha=0.85,
                  label=' '.join((method,) + others))
    ax.set_xlabel(x_key)
    if log_x:
      ax.set_xscale('log')
    if not numeric:
      ax.set_xticks(values, list(positions))
    _title_panel(ax, key, field, reference)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def plot_differences(summaries: list[tuple[tuple, dict]], path: str) -> str:
  """A forest plot: per sweep point and method, the paired difference of
  METRICS[0] to the reference with its 95% interval (dark) and, behind it,
  +- the minimum detectable effect (light): an interval inside the light bar
  that contains 0 says the comparison could not have seen a smaller effect."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  reference = next(iter(summaries[0][1]))
  rows = []
  for point, summary in summaries:
    for method, entry in summary.items():
      stat = entry[METRICS[0]].get(f'minus_{reference}')
      if stat and stat['ci95'] is not None:
        label = ' '.join([method] + [
            f"{k.removeprefix(method + '.')}={t}" for k, t, _ in point
            if applies(k, method)])
        if label not in (r[0] for r in rows):  # shared runs shown once
          rows.append((label, stat))
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
  for y, (_, stat) in enumerate(reversed(rows)):
    if stat['detectable'] is not None:
      ax.barh(y, 2 * stat['detectable'], left=-stat['detectable'],
              height=0.5, color='C0', alpha=0.15)
    low, high = stat['ci95']
    ax.errorbar(stat['mean'], y, xerr=[[stat['mean'] - low],
                                       [high - stat['mean']]],
                fmt='o', color='C0', capsize=3)
  ax.axvline(0.0, color='grey', linewidth=0.8)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
  ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)],
                fontsize=8)
  ax.set_xlabel(f'{METRICS[0]} minus {reference}, paired over seeds')
  ax.set_title('95% CI (bars) and ± minimum detectable effect (shaded)',
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80, bbox_inches='tight')
  plt.close(fig)
  return path
