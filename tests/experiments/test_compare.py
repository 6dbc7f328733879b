"""Methods over seeds: the summary statistics and the command end to end."""

import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from danil_jax.experiments import compare_grid
from danil_jax.experiments import comparison
from danil_jax.experiments import grid_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))


def test_mean_sample_sd_and_paired_difference():
  results = {
      'base': {0: dict(macro_f1=0.50, accuracy=0.60),
               1: dict(macro_f1=0.70, accuracy=0.80)},
      'danil': {0: dict(macro_f1=0.55, accuracy=0.60),
                1: dict(macro_f1=0.80, accuracy=0.90)},
  }
  summary = comparison.summarize(results)
  f1 = summary['danil']['macro_f1']
  assert f1['mean'] == pytest.approx(0.675)
  assert f1['sd'] == pytest.approx(np.sqrt(2 * 0.125 ** 2))  # ddof=1
  # Paired differences 0.05 and 0.10.
  assert f1['minus_base']['mean'] == pytest.approx(0.075)
  assert f1['minus_base']['sd'] == pytest.approx(np.sqrt(2 * 0.025 ** 2))
  assert summary['base']['accuracy']['sd'] == pytest.approx(np.sqrt(0.02))
  assert 'minus_base' not in summary['base']['accuracy']
  table = comparison.format_summary(summary)
  assert '0.6750 +- 0.1768 (+0.0750 +- 0.0354)' in table
  # The interval: mean +- t(0.975, 1 df) * sd / sqrt(2), t from a printed
  # table (tests/experiments/test_comparison_stats.py checks the detectable
  # effect).
  half = 12.7062 * 0.025
  assert f1['minus_base']['ci95'] == pytest.approx(
      [0.075 - half, 0.075 + half], abs=1e-5)
  lines = table.splitlines()
  header = next(line for line in lines if '95% CI' in line)
  assert re.split(r'\s{2,}', header) == [
      'method', 'metric', 'pairs', 'difference', '95% CI', 'p', 'detectable',
      'reading']
  row = re.split(r'\s{2,}', next(l for l in lines if 'danil   macro_f1' in l))
  assert row == [
      'danil', 'macro_f1', '2', '+0.0750 +- 0.0354',
      f'[{0.075 - half:+.4f}, {0.075 + half:+.4f}]', '0.205',
      f"{f1['minus_base']['detectable']:.4f}",
      'interval contains 0: no difference shown']
  assert 'ece' not in summary['base'] and 'ece' not in table


def test_calibration_columns_where_every_seed_has_them():
  results = {
      'base': {0: dict(macro_f1=0.5, accuracy=0.6, ece=0.10, brier=0.5),
               1: dict(macro_f1=0.7, accuracy=0.8, ece=0.20, brier=0.4)},
      'danil': {0: dict(macro_f1=0.5, accuracy=0.6, ece=0.05, brier=0.6,
                        ece_calibrated=0.02),
                1: dict(macro_f1=0.7, accuracy=0.8, ece=0.35, brier=0.3)},
  }
  summary = comparison.summarize(results)
  assert summary['danil']['ece']['mean'] == pytest.approx(0.2)
  # Paired differences -0.05 and +0.15.
  assert summary['danil']['ece']['minus_base']['mean'] == pytest.approx(0.05)
  assert summary['danil']['ece']['minus_base']['sd'] == pytest.approx(
      np.sqrt(2 * 0.1 ** 2))
  assert 'ece_calibrated' not in summary['danil']  # one seed lacks it
  table = comparison.format_summary(summary)
  assert '0.2000 +- 0.2121 (+0.0500 +- 0.1414)' in table
  assert 'ece_calibrated' not in table and 'brier' in table


def test_map_distance_is_paired_where_every_seed_has_it():
  results = {
      'base': {0: dict(macro_f1=0.5, accuracy=0.6, log10_map_distance=-2.0),
               1: dict(macro_f1=0.7, accuracy=0.8, log10_map_distance=-3.0,
                       log10_map_distance_misclassified=-1.0)},
      'danil': {0: dict(macro_f1=0.5, accuracy=0.6, log10_map_distance=-1.5),
                1: dict(macro_f1=0.7, accuracy=0.8, log10_map_distance=-2.0)},
  }
  summary = comparison.summarize(results)
  stat = summary['danil']['log10_map_distance']['minus_base']
  assert stat['mean'] == pytest.approx(0.75)  # differences 0.5 and 1.0
  assert stat['sd'] == pytest.approx(np.sqrt(2 * 0.25 ** 2))
  assert 'log10_map_distance_misclassified' not in summary['base']
  rows = comparison.difference_rows(summary)
  assert [row[:3] for row in rows] == [
      ['danil', 'macro_f1', '2'], ['danil', 'accuracy', '2'],
      ['danil', 'log10_map_distance', '2']]
  assert rows[2][3] == '+0.7500 ± 0.3536'
  table = comparison.format_summary(summary)
  assert '-1.7500 +- 0.3536 (+0.7500 +- 0.3536)' in table


def test_command_trains_each_seed_and_summarises_their_final_metrics(
    tmp_path):
  """Base and the control (DANIL with lam = 0) on two seeds, one step each:
  every new column in the console, the markdown and the JSON."""
  work = tmp_path / 'work'
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.compare', '--config=configs/demo.py',
       f'--workdir={work}', '--methods=base,control', '--seeds=3,4',
       f'--config.dataset.data_dir={tmp_path / "data"}',
       '--config.max_steps=1', '--config.input.global_batch_size=8',
       '--config.input.eval_batch_size=200', '--map_distance'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(work / 'comparison.json'))
  finals = {m: [json.load(open(work / f'{m}_seed{s}' / 'final_metrics.json'))
                for s in (3, 4)] for m in ('base', 'control')}
  assert summary['base']['seeds'] == [3, 4]
  assert summary['base']['accuracy']['values'] == [
      f['accuracy'] for f in finals['base']]
  for seed in (3, 4):  # the control trained DANIL's step with lam = 0
    saved = json.load(open(work / f'control_seed{seed}' / 'config.json'))
    assert (saved['method'], saved['danil']['lam'], saved['seed']) == (
        'danil', 0.0, seed)
  assert 'mean +- sample sd over seeds' in result.stdout
  diff = np.array([c['macro_f1'] - b['macro_f1']
                   for b, c in zip(finals['base'], finals['control'])])
  stat = summary['control']['macro_f1']['minus_base']
  half = 12.7062 * diff.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 df), a table
  assert stat['mean'] == pytest.approx(diff.mean())
  assert stat['ci95'] == pytest.approx([diff.mean() - half,
                                        diff.mean() + half], abs=1e-4)
  assert stat['detectable'] is not None and stat['reading']
  markdown = (work / 'comparison.md').read_text()
  assert ('| method | metric | pairs | difference | 95% CI | p | detectable '
          '| reading |') in markdown
  assert '| control | macro_f1 | 2 |' in markdown
  assert '| control | 2 |' in markdown  # its own row among the means
  assert 'Noise floor: control' in markdown
  assert (work / 'differences.png').read_bytes()[:4] == b'\x89PNG'
  console = result.stdout.splitlines()
  header = next(line for line in console if '95% CI' in line)
  assert 'detectable' in header and 'reading' in header
  cells = [re.split(r'\s{2,}', line)[:3] for line in console]
  assert ['control', 'macro_f1', '2'] in cells
  # --map_distance: each run's log10 median ||A+ - A-||^2, as its evaluation
  # folder has it, paired like the metrics.
  for method in ('base', 'control'):
    medians = [json.load(open(
        work / f'{method}_seed{s}' / 'eval' / 'test_last' / 'metrics.json'))[
            'map_distance']['all']['median'] for s in (3, 4)]
    assert summary[method]['log10_map_distance']['values'] == pytest.approx(
        np.log10(medians).tolist())
  assert summary['control']['log10_map_distance']['minus_base']['n'] == 2
  assert '| control | log10_map_distance | 2 |' in markdown
  assert ['control', 'log10_map_distance', '2'] in cells


def _config():
  return ml_collections.ConfigDict(dict(
      seed=0, method='danil', num_epochs=3, danil=dict(lam=1e-5, eps=1e-4,
                                                        reduction='per_image'),
      optim=dict(learning_rate=0.01, nesterov=False)))


def test_sweep_parses_keys_values_and_types():
  sweep = compare_grid.parse_sweep(
      ['danil.lam=1e-5,1e-1;num_epochs=1,2', 'optim.nesterov=true'], _config())
  assert sweep == [('danil.lam', [('1e-5', 1e-5), ('1e-1', 0.1)]),
                   ('num_epochs', [('1', 1), ('2', 2)]),
                   ('optim.nesterov', [('true', True)])]
  assert isinstance(sweep[0][1][0][1], float)
  points = compare_grid.grid(sweep)
  assert len(points) == 4
  assert len({compare_grid.point_label(p) for p in points}) == 4
  assert compare_grid.grid([]) == [()]


@pytest.mark.parametrize('text,message', [
    ('danil.lamda=1', 'no such config key'),
    ('danil=1', 'a config section'),
    ('num_epochs=1.5', 'expected a int'),
    ('optim.nesterov=yes', 'expected a bool'),
    ('seed=1,2', '--seeds'),
    ('danil.lam', "expected 'key=v1,v2,...'"),
    ('num_epochs=1;num_epochs=2', 'given twice'),
])
def test_sweep_rejects_bad_input_naming_the_key(text, message):
  with pytest.raises(ValueError, match=message):
    compare_grid.parse_sweep([text], _config())


def test_run_dirs_name_only_the_keys_that_change_the_method():
  point = (('danil.lam', '1e-3', 1e-3), ('optim.learning_rate', '0.1', 0.1))
  assert grid_runs.run_dir('w', 'danil', 3, point) == os.path.join(
      'w', 'danil_danil.lam=1e-3_optim.learning_rate=0.1_seed3')
  assert grid_runs.run_dir('w', 'base', 3, point) == os.path.join(
      'w', 'base_optim.learning_rate=0.1_seed3')
  assert grid_runs.run_dir('w', 'ohem', 3) == os.path.join('w', 'ohem_seed3')


def _sweep_command(work, data):
  return [sys.executable, '-m', 'danil_jax.compare',
          '--config=configs/demo.py', f'--workdir={work}',
          '--methods=base,danil', '--seeds=0',
          '--sweep=danil.lam=0.1,1',
          '--sweep=danil.reduction=per_image,batch',
          f'--config.dataset.data_dir={data}', '--config.max_steps=2',
          '--config.log_every_steps=1', '--config.input.global_batch_size=8',
          '--config.input.eval_batch_size=200']


def test_sweep_trains_every_combination_once_and_reuses_them(tmp_path):
  work, data = tmp_path / 'work', tmp_path / 'data'
  first = subprocess.run(_sweep_command(work, data), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  dirs = sorted(p.name for p in work.iterdir() if p.is_dir())
  # base does not read danil.*: one base run serves all four points.
  assert dirs == sorted(
      ['base_seed0'] + [f'danil_danil.lam={lam}_danil.reduction={r}_seed0'
                        for lam in ('0.1', '1')
                        for r in ('per_image', 'batch')])
  for lam in ('0.1', '1'):
    for reduction in ('per_image', 'batch'):
      saved = json.load(open(
          work / f'danil_danil.lam={lam}_danil.reduction={reduction}_seed0'
          / 'config.json'))
      assert (saved['danil']['lam'], saved['danil']['reduction']) == (
          float(lam), reduction)
  assert first.stdout.count('--- ') == 5
  comparison = json.load(open(work / 'comparison.json'))
  assert [p['values'] for p in comparison['points']] == [
      {'danil.lam': lam, 'danil.reduction': r}
      for lam in ('0.1', '1') for r in ('per_image', 'batch')]
  base_f1 = json.load(open(work / 'base_seed0' / 'final_metrics.json'))[
      'macro_f1']
  for point in comparison['points']:
    danil = point['summary']['danil']
    assert point['summary']['base']['macro_f1']['values'] == [base_f1]
    assert danil['macro_f1']['minus_base']['mean'] == pytest.approx(
        danil['macro_f1']['values'][0] - base_f1)
    assert danil['distraction_grad_ratio']['mean'] > 0
  assert (work / compare_grid.SWEEP_PLOT).stat().st_size > 0

  stamps = {p: p.stat().st_mtime_ns for p in work.glob('*/final_metrics.json')}
  again = subprocess.run(_sweep_command(work, data), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('(finished before)') == 5
  assert {p: p.stat().st_mtime_ns
          for p in work.glob('*/final_metrics.json')} == stamps

  # --only_finished trains nothing and leaves out the point without runs.
  os.remove(work / 'danil_danil.lam=1_danil.reduction=batch_seed0'
            / 'final_metrics.json')
  partial = subprocess.run(_sweep_command(work, data) + ['--only_finished'],
                           cwd=REPO, capture_output=True, text=True,
                           timeout=900)
  assert partial.returncode == 0, partial.stderr[-3000:]
  assert 'danil.lam=1 danil.reduction=batch: no finished run' in (
      partial.stdout)
  assert not (work / 'danil_danil.lam=1_danil.reduction=batch_seed0'
              / 'final_metrics.json').exists()
  assert len(json.load(open(work / 'comparison.json'))['points']) == 3


def test_finished_report_only_for_the_same_config(tmp_path):
  config = _config()
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  # Unfinished.
  assert grid_runs.finished_report(str(tmp_path), config) is None
  (tmp_path / 'final_metrics.json').write_text('{"macro_f1": 0.5}')
  assert grid_runs.finished_report(str(tmp_path), config) == {'macro_f1': 0.5}
  config.danil.lam = 1e-3
  assert grid_runs.finished_report(str(tmp_path), config) is None
  # A base run does not read danil.*: the same run whatever that holds.
  config.method = 'base'
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  config.danil.reduction = 'batch'
  assert grid_runs.finished_report(str(tmp_path), config) == {'macro_f1': 0.5}
  config.num_epochs = 4
  assert grid_runs.finished_report(str(tmp_path), config) is None


def test_control_trains_danil_with_lam_0_whatever_the_sweep(tmp_path):
  config = _config()
  config.method = 'base'
  point = (('danil.lam', '1e-3', 1e-3), ('danil.reduction', 'batch', 'batch'),
           ('num_epochs', '5', 5))
  settings = compare_grid.run_settings(config, comparison.CONTROL, 7, point)
  assert (settings.method, settings.danil.lam, settings.danil.reduction,
          settings.num_epochs, settings.seed) == ('danil', 0.0, 'per_image',
                                                  5, 7)
  # Its directory names only the keys that change it.
  assert grid_runs.run_dir('w', 'control', 7, point) == os.path.join(
      'w', 'control_num_epochs=5_seed7')
  # A run saved as DANIL with lam = 0 (as trained elsewhere) is its result.
  saved = _config()
  saved.danil.lam, saved.num_epochs, saved.seed = 0.0, 5, 7
  (tmp_path / 'config.json').write_text(saved.to_json_best_effort())
  (tmp_path / 'final_metrics.json').write_text('{"macro_f1": 0.5}')
  assert grid_runs.finished_report(str(tmp_path), settings) == {
      'macro_f1': 0.5}
  saved.danil.lam = 1e-5  # a DANIL run is not the control
  (tmp_path / 'config.json').write_text(saved.to_json_best_effort())
  assert grid_runs.finished_report(str(tmp_path), settings) is None


def test_noise_floor_names_the_map_distance_where_scored():
  def run(f1, distance=None):
    out = dict(macro_f1=f1, accuracy=f1)
    if distance is not None:
      out['log10_map_distance'] = distance
    return out

  results = dict(base={0: run(0.5, -2.0), 1: run(0.7, -3.0)},
                 control={0: run(0.52, -1.9), 1: run(0.71, -3.0)})
  floor = comparison.noise_floor(comparison.summarize(results))
  assert floor.startswith('Noise floor: control')
  assert 'macro_f1 sd 0.0071 over 2 pairs' in floor
  assert 'by log10_map_distance sd 0.0707 over 2 pairs' in floor
  results = dict(base={0: run(0.5), 1: run(0.7)},
                 control={0: run(0.52), 1: run(0.71)})
  assert 'log10_map_distance' not in comparison.noise_floor(
      comparison.summarize(results))


def test_map_scalars_read_from_an_evaluation_of_the_same_step(tmp_path,
                                                              monkeypatch):
  from danil_jax.evaluation import trained_run
  config = ml_collections.ConfigDict(dict(
      dataset=dict(eval_split='test'), eval=dict(tta='flips')))
  block = {group: dict(median=10.0 ** exponent, q1=0.0, q3=0.0, count=1)
           for group, exponent in (('all', -2), ('misclassified', -1),
                                   ('near_miss', 0))}
  folder = tmp_path / 'eval' / 'test_last_flips'
  folder.mkdir(parents=True)
  (folder / 'metrics.json').write_text(json.dumps(dict(step=7,
                                                       map_distance=block)))
  calls = []

  def evaluate_run(workdir, split, checkpoint, map_distance):
    calls.append((workdir, split, checkpoint, map_distance))
    return '', dict(step=8, map_distance=dict(block, all=dict(
        median=1000.0, q1=0.0, q3=0.0, count=1)))

  monkeypatch.setattr(trained_run, 'evaluate_run', evaluate_run)
  assert compare_grid.map_scalars(str(tmp_path), config, dict(step=7)) == {
      'log10_map_distance': pytest.approx(-2),
      'log10_map_distance_misclassified': pytest.approx(-1),
      'log10_map_distance_near_miss': pytest.approx(0)}
  assert not calls
  # A retrained run (another step): scored again.
  scalars = compare_grid.map_scalars(str(tmp_path), config, dict(step=8))
  assert calls == [(str(tmp_path), 'test', 'last', True)]
  assert scalars['log10_map_distance'] == pytest.approx(3)
