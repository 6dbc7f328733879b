"""The paper's Tables 1-4: its numbers, the rendering, and the grid command
end to end on the dummy data of all three data sets."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from danil_jax.experiments import grid_runs
from danil_jax.experiments import paper_grid
from danil_jax.experiments import paper_numbers as pn
from danil_jax.experiments import paper_runs
from danil_jax.experiments import paper_tables
from danil_jax import data_prep
from danil_jax.data_prep import testing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))
PAPER_TEXT = os.environ.get('DANIL_PAPER_TEXT',
                            '/work/shared/seeds/000_3819504b3d0a324c.txt')
DATASETS = ('ham10000', 'aptos2019', 'crc_msi')
SEEDS = (0, 1)
# Tiny runs: the demo model on 32 px images, one step.
TINY = ['--backbones=small_resnet', '--methods=base,danil',
        '--seeds=' + ','.join(map(str, SEEDS)), '--pretrained_root=',
        '--config.max_steps=1', '--config.dataset.image_size=32',
        '--config.input.global_batch_size=4',
        '--config.input.eval_batch_size=8', '--config.input.num_workers=0']


# ------------------------------------------------------------ the numbers --


def test_spot_checks_typed_from_the_paper():
  assert pn.number('macro_f1', 'ham10000', 'base', 'resnet50') == 0.658
  assert pn.number('macro_f1', 'aptos2019', 'canet', 'efficientnet_b0') == 0.656
  assert pn.number('macro_f1', 'crc_msi', 'danil', 'vgg11') == 0.683
  assert pn.number('accuracy', 'ham10000', 'multitask', 'resnet50') == 0.811
  assert pn.number('accuracy', 'aptos2019', 'dil', 'inception_v4') == 0.825
  assert pn.number('accuracy', 'crc_msi', 'ohem', 'efficientnet_b0') == 0.717
  assert pn.number('accuracy', 'crc_msi', 'dil', 'resnet50') is None
  assert pn.number('accuracy', 'crc_msi', 'base', 'small_resnet') is None


_LABELS = {'Base': 'base', 'Base+DANIL': 'danil', 'Base+OHEM': 'ohem',
           'Multi-task': 'multitask', 'DIL': 'dil', 'CANet': 'canet'}
_DATASET_HEADERS = {'HAM10000': 'ham10000', 'ATPOS2019': 'aptos2019',
                    'CRC-MSI': 'crc_msi'}


def _parse_paper_tables(text: str) -> dict:
  """Table number -> data set -> [(method, four numbers)] in printed order."""
  tables, table, dataset = {}, None, None
  for line in text.splitlines():
    line = line.strip()
    header = re.match(r'Table (\d):', line)
    if header:
      table = tables.setdefault(int(header.group(1)), {})
      continue
    if line.startswith('4 Concluding'):
      break
    if table is None:
      continue
    if line in _DATASET_HEADERS:
      dataset = table.setdefault(_DATASET_HEADERS[line], [])
      continue
    row = re.match(r'^(\S+)(?: \[\d+\])? (0\.\d{3}) (0\.\d{3}) (0\.\d{3}) '
                   r'(0\.\d{3})$', line)
    if row:
      dataset.append((_LABELS[row.group(1)],
                      tuple(float(row.group(i)) for i in range(2, 6))))
  return tables


@pytest.mark.skipif(not os.path.isfile(PAPER_TEXT),
                    reason='the paper text is not on this machine')
def test_every_number_and_row_order_match_the_paper_text():
  printed = _parse_paper_tables(open(PAPER_TEXT).read())
  assert sorted(printed) == [1, 2, 3, 4]
  for table in pn.TABLES:
    ours = {d: [(m, pn.NUMBERS[table.metric][d][m])
                for m in pn.table_methods(table, d)] for d in pn.DATASETS}
    assert printed[table.number] == ours, table.number


# ------------------------------------------------------------ rendering ----


def _fixed_results():
  """Two seeds of Base and DANIL on HAM10000 with ResNet50."""
  return {
      ('ham10000', 'resnet50', 'base'): {
          0: dict(macro_f1=0.60, accuracy=0.80, balanced_accuracy=0.5),
          1: dict(macro_f1=0.70, accuracy=0.90, balanced_accuracy=0.7)},
      ('ham10000', 'resnet50', 'danil'): {
          0: dict(macro_f1=0.64, accuracy=0.80, balanced_accuracy=0.6),
          1: dict(macro_f1=0.76, accuracy=0.92)},
  }


EXPECTED_TABLE_1 = """\
### Table 1: Ablation study, averaged (macro) F1

| Data set | Method | ResNet50 (ours) | ResNet50 (paper) |
|---|---|---|---|
| HAM10000 | Base | 0.6500 ± 0.0707 | 0.658 |
|  | Base+DANIL | 0.7000 ± 0.0849 (+0.0500 ± 0.0141) | 0.674 (+0.016) |
"""

EXPECTED_TABLE_3 = """\
### Table 3: Comparison with the state of the art, averaged (macro) F1

| Data set | Method | ResNet50 (ours) | ResNet50 (paper) |
|---|---|---|---|
| HAM10000 | Base | 0.6500 ± 0.0707 | 0.658 |
|  | Multi-task [3] | not run here | 0.667 (+0.009) |
|  | Base+OHEM | not run (--methods) | 0.660 (+0.002) |
|  | Base+DANIL | 0.7000 ± 0.0849 (+0.0500 ± 0.0141) | 0.674 (+0.016) |
"""

EXPECTED_HEADLINE = """\
### Headline metric: balanced_accuracy

| Data set | Method | ResNet50 |
|---|---|---|
| HAM10000 | Base | 0.6000 ± 0.1414 |
|  | Base+DANIL | 0.6000 (+0.1000) [n=1] |
"""


def test_rendering_matches_hand_written_tables():
  tables = paper_tables.build(
      _fixed_results(), datasets=['ham10000'], backbones=['resnet50'],
      methods=['base', 'danil'], seeds=[0, 1],
      headline_metrics=['balanced_accuracy', 'absent_metric'])
  text = paper_tables.to_markdown(tables)
  assert EXPECTED_TABLE_1 in text
  assert EXPECTED_TABLE_3 in text
  assert EXPECTED_HEADLINE in text
  assert 'absent_metric' not in text
  assert '| Base | 0.8500 ± 0.0707 | 0.779 |' in text  # Table 2
  # The JSON keeps the values behind each cell.
  danil = tables['tables'][0]['rows'][1]['cells']['resnet50']
  assert danil['ours']['values'] == [0.64, 0.76]
  assert danil['ours']['minus_base']['mean'] == pytest.approx(0.05)
  assert danil['paper'] == 0.674
  json.dumps(tables, allow_nan=False)  # no NaN for one-seed cells


def test_an_unfinished_run_reads_pending():
  results = _fixed_results()
  del results[('ham10000', 'resnet50', 'danil')]
  text = paper_tables.to_markdown(paper_tables.build(
      results, datasets=['ham10000'], backbones=['resnet50'],
      methods=['base', 'danil'], seeds=[0, 1]))
  assert '|  | Base+DANIL | pending | 0.674 (+0.016) |' in text


def test_control_row_and_paired_differences_with_interval():
  results = _fixed_results()
  results[('ham10000', 'resnet50', 'control')] = {
      0: dict(macro_f1=0.61, accuracy=0.80), 1: dict(macro_f1=0.69,
                                                    accuracy=0.91)}
  tables = paper_tables.build(
      results, datasets=['ham10000'], backbones=['resnet50'],
      methods=['base', 'danil', 'control'], seeds=[0, 1])
  text = paper_tables.to_markdown(tables)
  # Its own row below the paper's in each table, with no paper number.
  assert text.count('|  | DANIL, lam = 0 (control) | 0.6500 ± 0.0566 '
                    '(+0.0000 ± 0.0141) | — |') == 2
  assert ('| Data set | Method | Backbone | pairs | difference | 95% CI | p '
          '| detectable | reading | paper − Base (one run) |') in text
  # DANIL - Base: 0.04 and 0.06; t(0.975, 1 df) = 12.7062 from a table.
  half = 12.7062 * 0.01
  assert (f'| HAM10000 | Base+DANIL | ResNet50 | 2 | +0.0500 ± 0.0141 | '
          f'[{0.05 - half:+.4f}, {0.05 + half:+.4f}] |') in text
  assert text.count('interval contains 0: no difference shown') == 4
  assert '| +0.016 |' in text  # the paper's one-run difference beside it
  danil = tables['tables'][0]['rows'][1]['cells']['resnet50']['ours']
  assert danil['minus_base']['ci95'] == pytest.approx(
      [0.05 - half, 0.05 + half], abs=1e-5)
  assert danil['minus_base']['detectable'] > 0.05
  control = tables['tables'][0]['rows'][2]
  assert (control['method'], control['status']) == ('control', 'run')
  json.dumps(tables, allow_nan=False)


def test_the_control_trains_danil_with_lam_0(tmp_path):
  runs = paper_grid.plan(str(tmp_path), datasets=['crc_msi'],
                         backbones=['small_resnet'],
                         methods=['base', 'control'], seeds=[0],
                         pretrained_root='', config_overrides={})
  control = runs[1]
  assert control.workdir.endswith(os.path.join('small_resnet',
                                               'control_seed0'))
  assert (control.config.method, control.config.danil.lam) == ('danil', 0.0)
  line = paper_runs.job_command(control)
  assert '--config.method=danil' in line and '--config.danil.lam=0.0' in line
  with pytest.raises(ValueError, match='--methods'):
    paper_grid.plan(str(tmp_path), datasets=['crc_msi'],
                    backbones=['small_resnet'], methods=['contrl'],
                    seeds=[0], pretrained_root='', config_overrides={})


# -------------------------------------------------------- the command ------


def _env(cache_dir):
  # Runs of one data set and method share their programs across seeds and
  # processes through JAX's persistent compilation cache.
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


def _paper(args, env, timeout=600):
  return subprocess.run([sys.executable, '-m', 'danil_jax.paper', *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module')
def dummy(tmp_path_factory):
  """The three dummy data sets, built once, and a shared compile cache."""
  root = tmp_path_factory.mktemp('paper')
  manual, data = root / 'manual', root / 'data'
  for name in DATASETS:
    shutil.copytree(testing.dummy_dir(name), manual / name)
    config = importlib.import_module(f'configs.{name}').get_config()
    data_prep.prepare(name, data_dir=str(data), manual_dir=str(manual / name),
                      config=config.dataset.builder_config)
  data_flags = [f'--data_dir={data}', f'--manual_root={manual}']
  return dict(root=root, flags=data_flags, env=_env(root / 'jax_cache'))


@pytest.fixture(scope='module')
def grid(dummy):
  """The runner over all three data sets x base, danil x two seeds."""
  work = dummy['root'] / 'grid'
  result = _paper([f'--workdir={work}', *TINY, *dummy['flags']], dummy['env'])
  assert result.returncode == 0, result.stderr[-3000:]
  return work, result


def _run_cells(tables):
  """(table, dataset, method, backbone) -> our cell, for rows run here."""
  return {(t['number'], r['dataset'], r['method'], b): c['ours']
          for t in tables['tables'] for r in t['rows'] if r['status'] == 'run'
          for b, c in r['cells'].items()}


def test_grid_fills_every_run_cell_of_the_four_tables(grid):
  work, result = grid
  tables = json.load(open(work / 'paper_tables.json'))
  cells = _run_cells(tables)
  # Two methods x three data sets in each of the four tables.
  assert len(cells) == 4 * 3 * 2
  for key, cell in cells.items():
    assert cell is not None and cell['n'] == len(SEEDS), key
    finals = [json.load(open(work / key[1] / 'small_resnet' /
                             f'{key[2]}_seed{s}' / 'final_metrics.json'))
              for s in SEEDS]
    for seed in SEEDS:  # each run trained what its folder says
      config = json.load(open(work / key[1] / 'small_resnet' /
                              f'{key[2]}_seed{seed}' / 'config.json'))
      assert (config['dataset']['name'], config['model']['name'],
              config['method'], config['seed']) == (key[1], 'small_resnet',
                                                    key[2], seed)
    metric = 'macro_f1' if key[0] in (1, 3) else 'accuracy'
    values = [f[metric] for f in finals]
    assert cell['values'] == values
    assert cell['mean'] == pytest.approx(np.mean(values))
  text = open(work / 'paper_tables.md').read()
  for number in (1, 2, 3, 4):
    assert f'### Table {number}:' in text and f'### Table {number}:' in (
        result.stdout)
  assert 'pending' not in text
  assert text.count('| not run here |') == 2 * 3  # Multi-task, DIL, CANet
  assert "training from scratch" in result.stderr


def test_rerun_reuses_finished_runs_and_collect_agrees(grid, dummy):
  work, _ = grid
  before = json.load(open(work / 'paper_tables.json'))
  again = _paper([f'--workdir={work}', *TINY, *dummy['flags']], dummy['env'])
  assert again.returncode == 0, again.stderr[-3000:]
  assert '--- run' not in again.stdout  # nothing trained
  collected = _paper([f'--workdir={work}', '--collect', *TINY,
                      *dummy['flags']], dummy['env'])
  assert collected.returncode == 0, collected.stderr[-3000:]
  assert json.load(open(work / 'paper_tables.json')) == before


def test_a_finished_run_with_another_config_is_an_error(grid, dummy):
  work, _ = grid
  result = _paper([f'--workdir={work}', '--collect', *TINY,
                   '--config.optim.learning_rate=0.5', *dummy['flags']],
                  dummy['env'])
  assert result.returncode == 1
  assert 'optim.learning_rate: run has 0.01, grid asks 0.5' in result.stderr


def test_emitted_jobs_run_one_by_one_give_the_runners_tables(grid, dummy):
  """On CRC-MSI only (four jobs), to keep the test short."""
  work, _ = grid
  jobs_work, jobs_file = dummy['root'] / 'jobs', dummy['root'] / 'jobs.txt'
  flags_ = [f'--workdir={jobs_work}', '--datasets=crc_msi', *TINY,
            *dummy['flags']]
  emitted = _paper([*flags_, f'--emit_jobs={jobs_file}'], dummy['env'])
  assert emitted.returncode == 0, emitted.stderr[-3000:]
  assert not jobs_work.exists() or not any(jobs_work.iterdir())
  lines = open(jobs_file).read().splitlines()
  assert len(lines) == 2 * len(SEEDS)
  for line in lines:  # from elsewhere: each line is self-contained
    job = subprocess.run(line, shell=True, cwd=dummy['root'],
                         env=dummy['env'], capture_output=True, text=True,
                         timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
  collected = _paper([*flags_, '--collect'], dummy['env'])
  assert collected.returncode == 0, collected.stderr[-3000:]
  ours = _run_cells(json.load(open(jobs_work / 'paper_tables.json')))
  runner = {k: v for k, v in _run_cells(
      json.load(open(work / 'paper_tables.json'))).items() if k[1] == 'crc_msi'}
  assert ours == runner
  for method in ('base', 'danil'):
    for seed in SEEDS:
      run = f'crc_msi/small_resnet/{method}_seed{seed}'
      assert (json.load(open(jobs_work / run / 'config.json')) ==
              json.load(open(work / run / 'config.json')))
  # Every run is now finished: nothing left to emit.
  again = _paper([*flags_, f'--emit_jobs={jobs_file}'], dummy['env'])
  assert again.returncode == 0 and open(jobs_file).read() == ''


def test_missing_weights_are_named_before_anything_trains(dummy, tmp_path):
  root = tmp_path / 'pretrained'
  (root / 'resnet50').mkdir(parents=True)
  (root / 'resnet50' / 'metadata.json').write_text(json.dumps(
      dict(arch='vgg11', num_classes=1000)))
  work = tmp_path / 'work'
  result = _paper([f'--workdir={work}', '--datasets=crc_msi',
                   '--backbones=resnet50,vgg11,efficientnet_b0',
                   f'--pretrained_root={root}', '--seeds=0',
                   *dummy['flags']], dummy['env'])
  assert result.returncode == 1
  assert 'nothing was trained' in result.stderr
  assert f'resnet50: {root}/resnet50 holds vgg11 weights' in result.stderr
  assert f'vgg11: no converted weights in {root}/vgg11' in result.stderr
  assert 'efficientnet_b0: no converted weights' in result.stderr
  assert not work.exists()


def test_bad_overrides_name_the_key(tmp_path):
  kw = dict(datasets=['crc_msi'], backbones=['small_resnet'],
            methods=['base'], seeds=[0], pretrained_root='')
  with pytest.raises(ValueError, match="no config key 'optim.lerning_rate'"):
    paper_grid.plan(str(tmp_path), config_overrides={}, dataset_overrides=dict(
        crc_msi={'optim.lerning_rate': '0.1'}), **kw)
  with pytest.raises(ValueError, match='--config.method is set per run'):
    paper_grid.plan(str(tmp_path), config_overrides={'method': 'ohem'}, **kw)
  with pytest.raises(ValueError, match=r"optim.momentum='fast': expected a "
                     'float'):
    paper_grid.plan(str(tmp_path), config_overrides={}, dataset_overrides=dict(
        crc_msi={'optim.momentum': 'fast'}), **kw)
  runs = paper_grid.plan(str(tmp_path), config_overrides={'max_steps': 3},
                         dataset_overrides=dict(crc_msi={
                             'dataset.builder_config': 'x',
                             'input.augment': 'false'}), **kw)
  config = runs[0].config
  assert (config.max_steps, config.dataset.builder_config,
          config.input.augment) == (3, 'x', False)


def test_headline_metrics_from_a_config_key_and_labelled_final_metrics(
    tmp_path):
  runs = paper_grid.plan(str(tmp_path), datasets=['crc_msi'],
                         backbones=['small_resnet'], methods=['base'],
                         seeds=[0], pretrained_root='', config_overrides={})
  run = runs[0]
  run.config.unlock()
  run.config.eval = dict(headline_metrics=('patient_auroc', 'macro_f1'),
                         headline_flag=True)
  assert paper_runs.headline_metrics(runs, ['kappa']) == [
      'kappa', 'patient_auroc']
  os.makedirs(run.workdir)
  with open(os.path.join(run.workdir, 'final_metrics.json'), 'w') as f:
    json.dump(dict(best=dict(macro_f1=0.9), last=dict(
        macro_f1=0.5, accuracy=0.75, patient_auroc=0.625, per_class_f1={})),
              f)
  assert grid_runs.final_metrics(run.workdir) == dict(
      macro_f1=0.5, accuracy=0.75, patient_auroc=0.625)


def test_collect_tabulates_the_calibration_metrics_runs_have(tmp_path):
  runs = paper_grid.plan(str(tmp_path), datasets=['crc_msi'],
                         backbones=['small_resnet'], methods=['base'],
                         seeds=[0, 1], pretrained_root='', config_overrides={})
  for run, ece in zip(runs, (0.10, 0.20)):
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, 'final_metrics.json'), 'w') as f:
      json.dump(dict(macro_f1=0.5, accuracy=0.75, ece=ece, brier=0.3,
                     calibration='not calibrated: no validation split'), f)
  tables = paper_runs.collect(runs, [0, 1])
  # No patient_auroc (the config's headline) nor ece_calibrated: no table.
  assert [t['title'] for t in tables['headline']] == [
      'Calibration: ece (lower is better)',
      'Calibration: brier (lower is better)']
  text = paper_tables.to_markdown(tables)
  assert '### Calibration: ece (lower is better)' in text
  assert '| CRC-MSI | Base | 0.1500 ± 0.0707 |' in text
