"""Our runs in the layout of the paper's Tables 1-4, beside its numbers.

`build(results, ...)` turns {(dataset, backbone, method): {seed: metrics}}
into a JSON-ready dict of tables; `to_markdown` prints it. Each of our cells
is the mean +- sample sd (ddof=1) over seeds and, below Base, the mean +- sd
of the paired difference to Base on the same seeds. The paper's number sits
beside it with its own difference to the paper's Base (one run each). Rows of
methods danil-jax does not implement (Multi-task, DIL, CANet) hold only the
paper's numbers, marked "not run here"; the control (DANIL with lam = 0),
when run, gets a row below the paper's. `difference_tables` adds, per metric,
each paired difference with its 95% interval, p-value, minimum detectable
effect and reading (danil_jax.experiments.paired_stats) beside the paper's
one-run one.
"""

import math

import numpy as np

from danil_jax.experiments import paired_stats
from danil_jax.experiments import paper_numbers as pn

NOT_RUN_HERE = 'not run here'
NOT_REQUESTED = 'not run (--methods)'
PENDING = 'pending'


def _finite(x):
  return None if x is None or not math.isfinite(x) else x


def cell_stats(values: dict[int, float],
               base: dict[int, float] | None) -> dict | None:
  """{seed: value} (and Base's) -> mean, sd, n and the paired difference
  (`paired_stats.describe`: with its 95% interval and detectable effect)."""
  if not values:
    return None
  seeds = sorted(values)
  v = np.array([values[s] for s in seeds], np.float64)
  cell = dict(n=len(seeds), seeds=seeds, values=v.tolist(),
              mean=float(v.mean()),
              sd=_finite(float(v.std(ddof=1))) if len(v) > 1 else None)
  difference = paired_stats.paired(values, base) if base else None
  if difference is not None:
    cell['minus_base'] = difference
  return cell


def _metric_values(results, key, metric):
  return {seed: m[metric] for seed, m in results.get(key, {}).items()
          if metric in m}


def _row(results, dataset, backbones, method, metric, methods, paper: bool):
  """One table row: per backbone our cell (or why there is none) and the
  paper's number with its difference to the paper's Base."""
  run_here = method in pn.RUN_METHODS or method == pn.CONTROL
  status = ('run' if method in methods else
            NOT_REQUESTED if run_here else NOT_RUN_HERE)
  cells = {}
  for backbone in backbones:
    ours = None
    if status == 'run':
      base = (_metric_values(results, (dataset, backbone, 'base'), metric)
              if method != 'base' and 'base' in methods else None)
      ours = cell_stats(
          _metric_values(results, (dataset, backbone, method), metric), base)
    cell = dict(ours=ours)
    if paper:
      value = pn.number(metric, dataset, method, backbone)
      paper_base = pn.number(metric, dataset, 'base', backbone)
      cell['paper'] = value
      cell['paper_minus_base'] = (
          round(value - paper_base, 6)
          if value is not None and paper_base is not None
          and method != 'base' else None)
    cells[backbone] = cell
  return dict(dataset=dataset, method=method,
              label=pn.METHOD_LABELS.get(method, method), status=status,
              cells=cells)


def build(results: dict, *, datasets, backbones, methods, seeds,
          headline_metrics=(), calibration_metrics=()) -> dict:
  """The paper's four tables (and one per headline and calibration metric,
  each where some finished run has it) as a dict.

  `results` maps (dataset, backbone, method) to {seed: {metric: value}} for
  the finished runs. Rows: the methods the paper prints for each data set in
  its order, plus any method run here that a table's layout has room for.
  """
  methods = list(methods)
  tables = []
  for table in pn.TABLES:
    rows = []
    for dataset in datasets:
      printed = pn.table_methods(table, dataset) if dataset in pn.DATASETS else ()
      # The control, when run, below the paper's rows: the noise floor.
      order = table.methods + ((pn.CONTROL,) if pn.CONTROL in methods else ())
      for method in order:
        if method in printed or method in methods:
          rows.append(_row(results, dataset, backbones, method, table.metric,
                           methods, paper=True))
    tables.append(dict(number=table.number, title=table.title,
                       metric=table.metric, rows=rows))
  headline = []
  titles = ([(m, f'Headline metric: {m}') for m in headline_metrics]
            + [(m, f'Calibration: {m} (lower is better)')
               for m in calibration_metrics])
  for metric, title in titles:
    rows = []
    for dataset in datasets:
      dataset_rows = [_row(results, dataset, backbones, method, metric,
                           methods, paper=False) for method in methods]
      # A headline metric is one data set's (patient AUROC is CRC-MSI's):
      # other data sets get no row rather than a row of 'pending'.
      if any(cell['ours'] for row in dataset_rows
             for cell in row['cells'].values()):
        rows += dataset_rows
    if rows:
      headline.append(dict(title=title, metric=metric, rows=rows))
  return dict(seeds=list(seeds), datasets=list(datasets),
              backbones=list(backbones), methods=methods, tables=tables,
              headline=headline)


def _mean_sd(stat: dict) -> str:
  if stat['sd'] is None:
    return f"{stat['mean']:.4f}"
  return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"


def _signed(stat: dict) -> str:
  if stat['sd'] is None:
    return f"{stat['mean']:+.4f}"
  return f"{stat['mean']:+.4f} ± {stat['sd']:.4f}"


def format_ours(row: dict, cell: dict, num_seeds: int) -> str:
  if row['status'] != 'run':
    return row['status']
  ours = cell['ours']
  if ours is None:
    return PENDING
  text = _mean_sd(ours)
  if 'minus_base' in ours:
    text += f" ({_signed(ours['minus_base'])})"
  if ours['n'] != num_seeds:
    text += f" [n={ours['n']}]"
  return text


def format_paper(cell: dict) -> str:
  if cell.get('paper') is None:
    return '—'
  text = f"{cell['paper']:.3f}"
  if cell.get('paper_minus_base') is not None:
    text += f" ({cell['paper_minus_base']:+.3f})"
  return text


def _markdown_table(title: str, rows: list[dict], backbones, num_seeds: int,
                    paper: bool) -> list[str]:
  labels = [pn.BACKBONE_LABELS.get(b, b) for b in backbones]
  header = ['Data set', 'Method']
  for label in labels:
    header += [f'{label} (ours)', f'{label} (paper)'] if paper else [label]
  lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  previous = None
  for row in rows:
    dataset = row['dataset']
    name = pn.DATASET_LABELS.get(dataset, dataset) if dataset != previous else ''
    previous = dataset
    cells = [name, row['label']]
    for backbone in backbones:
      cell = row['cells'][backbone]
      cells.append(format_ours(row, cell, num_seeds))
      if paper:
        cells.append(format_paper(cell))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines + ['']


def _difference_table(title: str, rows: list[dict], backbones,
                      paper: bool) -> list[str]:
  """One line per method, data set and backbone with a paired difference to
  Base: its interval, detectable effect and reading, and the paper's."""
  header = ['Data set', 'Method', 'Backbone', *paired_stats.HEADERS]
  header += ['paper − Base (one run)'] if paper else []
  lines = []
  for row in rows:
    for backbone in backbones:
      cell = row['cells'][backbone]
      stat = (cell['ours'] or {}).get('minus_base')
      if stat is None:
        continue
      line = [pn.DATASET_LABELS.get(row['dataset'], row['dataset']),
              row['label'], pn.BACKBONE_LABELS.get(backbone, backbone),
              *paired_stats.cells(stat)]
      if paper:
        line.append('—' if cell.get('paper_minus_base') is None
                    else f"{cell['paper_minus_base']:+.3f}")
      lines.append('| ' + ' | '.join(line) + ' |')
  if not lines:
    return []
  return [f'### {title}', '', '| ' + ' | '.join(header) + ' |',
          '|' + '---|' * len(header), *lines, '']


def difference_tables(tables: dict) -> list[str]:
  """Markdown of the paired differences to Base, one table per metric (of
  the paper's tables, the one with most rows; then the headline metrics)."""
  lines, by_metric = [], {}
  for table in tables['tables']:
    if len(table['rows']) > len(by_metric.get(table['metric'], ())):
      by_metric[table['metric']] = table['rows']
  for metric, rows in by_metric.items():
    lines += _difference_table(f'Paired differences to Base: {metric}', rows,
                               tables['backbones'], paper=True)
  for table in tables['headline']:
    lines += _difference_table(
        f"Paired differences to Base: {table['metric']}", table['rows'],
        tables['backbones'], paper=False)
  if lines:
    lines += [paired_stats.LEGEND.format(pm='±') + ' The paper reports one '
              'run per cell: its difference has no interval. If one-run '
              'differences scatter with sd σ (ours above estimates σ for '
              'runs on the same seed), a single one is significant at 5% '
              'only beyond 1.96 σ, and an effect is found with 80% power '
              'only beyond 2.8 σ.', '']
  return lines


def to_markdown(tables: dict) -> str:
  """The tables as markdown, with a legend; `tables` as `build` returns."""
  num_seeds = len(tables['seeds'])
  seeds = ','.join(str(s) for s in tables['seeds'])
  lines = [
      f'Ours: mean ± sample sd over seeds {seeds} of the test metric after '
      'the last epoch, (+x ± s): mean ± sd of the paired difference to our '
      'Base on the same seeds, [n=k]: only k seeds finished. Paper: Gong, '
      'Ma & Zheng (MICCAI 2020), one run per cell, (+x): its difference to '
      "its Base. Rows the paper reports for methods danil-jax does not "
      f'implement are marked "{NOT_RUN_HERE}".', '']
  for table in tables['tables']:
    lines += _markdown_table(f"Table {table['number']}: {table['title']}",
                             table['rows'], tables['backbones'], num_seeds,
                             paper=True)
  for table in tables['headline']:
    lines += _markdown_table(table['title'], table['rows'],
                             tables['backbones'], num_seeds, paper=False)
  return '\n'.join(lines + difference_tables(tables))
