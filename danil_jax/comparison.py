"""Methods compared over seeds: statistics, a table and a sweep plot.

Per method: the mean and sample standard deviation over seeds of each final
metric, and the paired difference to the first method on the same seeds;
DANIL's gradient ratio as logged. `plot_sweep` draws them against a swept
config value (danil_jax.compare).
"""

import numpy as np

METRICS = ('macro_f1', 'accuracy')
# Summarised like METRICS where every seed's run has them (ece_calibrated and
# brier only with a validation split; danil_jax/calibration.py).
CALIBRATION = ('ece', 'ece_calibrated', 'brier')
# Read from each DANIL run's metrics.jsonl: whether the term acts at all.
DIAGNOSTICS = ('distraction_grad_ratio', 'distraction_grad_share')
# Config sections only one method reads.
METHOD_SECTIONS = ('danil', 'ohem')


def applies(key: str, method: str) -> bool:
  """Whether config `key` can change a `method` run."""
  section = key.split('.')[0]
  return section not in METHOD_SECTIONS or section == method


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
    for metric in METRICS + CALIBRATION:
      if metric in CALIBRATION and not all(
          results[method][s].get(metric) is not None for s in entry['seeds']):
        continue
      values = np.array([results[method][s][metric] for s in entry['seeds']])
      entry[metric] = dict(
          mean=float(values.mean()),
          sd=float(values.std(ddof=1)) if len(values) > 1 else float('nan'),
          values=values.tolist())
      common = [s for s in entry['seeds'] if s in reference
                and reference[s].get(metric) is not None]
      if method != methods[0] and common:
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
  calibration = [m for m in CALIBRATION if any(m in summary[n] for n in methods)]
  if calibration:
    lines.append(f"{'':<8} {'':>5}  " + '  '.join(f'{m:>34}'
                                                  for m in calibration))
    for method in methods:
      cells = []
      for metric in calibration:
        value = summary[method].get(metric)
        cell = '-' if value is None else (
            f"{value['mean']:.4f} +- {value['sd']:.4f}")
        paired = (value or {}).get(f'minus_{methods[0]}')
        if paired:
          cell += f" ({paired['mean']:+.4f} +- {paired['sd']:.4f})"
        cells.append(f'{cell:>34}')
      lines.append(f"{method:<8} {'':>5}  " + '  '.join(cells))
  lines.append(f'mean +- sample sd over seeds; (+x +- s): mean and sample sd '
               f'of the paired difference to {methods[0]} on the same seeds; '
               'grad ratio: '
               '||g_d|| / ||g_ce||, median over logged steps, mean over seeds.')
  return '\n'.join(lines)


def _sweep_series(summaries: list[tuple[tuple, dict]], sweep):
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

  x_key, positions, numeric, series = _sweep_series(summaries, sweep)
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
    _title_panel(ax, key, field, reference)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
