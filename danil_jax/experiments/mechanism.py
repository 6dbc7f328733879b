"""Does DANIL do what it says? Its mechanism beside its F1, against lam.

DANIL's claim (the paper's §2, Eqs. 2-5) is that penalising a small
||A+ - A-||^2 makes the network's evidence for confusable classes more
distinct. A sweep over `danil.lam` with `compare --map_distance` pairs, per
lam and seed, DANIL's macro-F1 and its log10 median map distance
(danil_jax.evaluation.map_distance; all, misclassified and near-miss test
images) with Base's. `plot` draws those paired differences against lam,
each with its 95% interval, over the control's (lam = 0) interval as a
band: the difference that training noise alone gives. A lam whose interval
leaves the band moved the maps (or the F1) beyond that noise.
"""

from danil_jax.experiments import comparison

# The panels: the headline metric, then the map distance per image group
# (paired against the reference), then how much the term acts: its share of
# the parameter gradient (DANIL runs' median over steps; not paired).
PANELS = (comparison.METRICS[0],) + comparison.MAP_DISTANCE
SHARE = comparison.DIAGNOSTICS[1]


def _control_stat(summaries, key: str, paired: str):
  """The control's paired difference for `key` (the same runs at every
  point of a sweep over DANIL's keys), or None."""
  for _, summary in summaries:
    stat = summary.get(comparison.CONTROL, {}).get(key, {}).get(paired)
    if stat and stat['ci95'] is not None:
      return stat
  return None


def present(summaries) -> list[str]:
  """The PANELS keys and SHARE that some method of some point has."""
  return [key for key in PANELS + (SHARE,)
          if any(key in entry for _, summary in summaries
                 for entry in summary.values())]


def _cell(entry: dict, key: str, paired: str):
  """(middle, low, high) of one point: the paired mean and its 95% CI, or
  for SHARE the mean and range over seeds; None where undefined."""
  value = entry.get(key)
  if not value:
    return None
  if key == SHARE:
    return value['mean'], min(value['values']), max(value['values'])
  stat = value.get(paired) or {}
  return (stat['mean'], *stat['ci95']) if stat.get('ci95') else None


def plot(summaries: list[tuple[tuple, dict]], sweep, path: str) -> str:
  """One panel per `present` key: each method's paired difference to the
  reference (mean, 95% CI) against the last numeric swept key, over the
  control's 95% CI as a grey band (its mean dashed); last, the term's share
  of the gradient (mean, range over seeds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  x_key, positions, numeric, series = comparison.sweep_series(summaries,
                                                              sweep)
  reference = next(iter(summaries[0][1]))
  paired = f'minus_{reference}'
  panels = present(summaries)
  values = list(positions.values())
  log_x = numeric and min(values) > 0 and max(values) / min(values) >= 100
  fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8),
                           squeeze=False)
  drawn = [(m, o, by_x) for (m, o), by_x in sorted(series.items())
           if m not in (reference, comparison.CONTROL)]
  for ax, key in zip(axes[0], panels):
    control = _control_stat(summaries, key, paired)
    if control:
      ax.axhspan(*control['ci95'], color='grey', alpha=0.25,
                 label=f'{comparison.CONTROL} (lam = 0), 95% CI')
      ax.axhline(control['mean'], color='grey', lw=1, ls='--')
    if key != SHARE:
      ax.axhline(0.0, color='black', lw=0.6)
    for index, (method, others, by_x) in enumerate(drawn):
      points = sorted((positions[t], _cell(e, key, paired))
                      for t, e in by_x.items() if _cell(e, key, paired))
      if not points:
        continue
      xs, cells = zip(*points)
      shift = index - (len(drawn) - 1) / 2  # side by side, not on top
      xs = [x * 1.08 ** shift if log_x else x + 0.02 * shift for x in xs]
      ax.errorbar(xs, [c[0] for c in cells],
                  yerr=[[c[0] - c[1] for c in cells],
                        [c[2] - c[0] for c in cells]],
                  marker='o', capsize=3, color=f'C{index}',
                  label=' '.join((method,) + others))
    if log_x:
      ax.set_xscale('log')
    if not numeric:
      ax.set_xticks(values, list(positions))
    ax.set_xlabel(x_key)
    if key == SHARE:
      ax.set_yscale('log')
      ax.set_title(f'{key}\nshare of the gradient from lam * Ld: mean, '
                   'range over seeds', fontsize=9)
    else:
      ax.set_title(f'{key}\nminus {reference}, paired: mean, 95% CI',
                   fontsize=9)
    if key in comparison.MAP_DISTANCE:
      ax.set_ylabel('log10 ratio of medians of ||A+ - A-||^2', fontsize=8)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
