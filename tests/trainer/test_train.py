"""The trainer end to end on the embedded demo data set."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import jax
import numpy as np
import pytest

from danil_jax.configs import demo
from danil_jax.runtime import input_pipeline
from danil_jax.trainer import train
from danil_jax import data_prep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return str(demo_data_dir)


def small_config(data_dir, num_workers=0, **overrides):
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.max_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.input.global_batch_size = 16
  config.input.eval_batch_size = 128
  config.input.num_workers = num_workers
  for key, value in overrides.items():
    config[key] = value
  config.lock()
  return config


def read_log(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('method', ['danil', 'ohem', 'base'])
def test_runs_every_method_and_evaluates_the_whole_test_split(
    tmp_path, data_dir, method, caplog):
  with jax.log_compiles(), caplog.at_level(logging.WARNING, logger='jax'):
    report = train.train_and_evaluate(small_config(data_dir, method=method),
                                      str(tmp_path))
  # Each step function compiles once: the state the first step returns has
  # the shardings the step was compiled for (one device is a mesh too).
  compiled = [r.getMessage().split()[1] for r in caplog.records
              if r.getMessage().startswith('Compiling jit(')]
  for step in ('jit(_train_step)', 'jit(eval_step)') + (
      ('jit(gradient_share)',) if method == 'danil' else ()):
    assert compiled.count(step) == 1, compiled
  log = read_log(tmp_path)
  train_lines = [r for r in log if r['kind'] == 'train']
  eval_lines = [r for r in log if r['kind'] == 'eval']
  assert [r['step'] for r in train_lines] == [1, 2, 3, 4]
  assert len(eval_lines) == 1 and eval_lines[0]['num_examples'] == 800
  assert sum(map(sum, report['confusion_matrix'])) == 800
  assert 0.0 <= report['macro_f1'] <= 1.0
  for record in train_lines:
    assert 0.0 <= record['misclassified'] <= 1.0
    if method == 'danil':
      # ||g_d|| / ||g_ce + g_d|| has no upper bound (it exceeds 1 when the
      # two gradients oppose); its value is pinned against two separate
      # gradients in test_reference_training.py.
      assert record['distraction_grad_share'] >= 0.0
      if record['misclassified'] > 0:
        assert record['distraction_grad_share'] > 0.0
    else:
      assert record['distraction'] == 0.0
  assert (tmp_path / 'curves.png').stat().st_size > 0
  final = json.load(open(tmp_path / 'final_metrics.json'))
  assert final['accuracy'] == report['accuracy']


@pytest.fixture(scope='module')
def straight_run(shared_dir, data_dir):
  """An uninterrupted 6-step run in the main process (no grain workers), one
  for the whole suite (read it only)."""
  return shared_dir('test_train_straight_run', lambda path: (
      train.train_and_evaluate(small_config(data_dir, max_steps=6),
                               str(path))))


def train_losses(workdir):
  return [(r['step'], r['loss']) for r in read_log(workdir)
          if r['kind'] == 'train']


def test_resuming_replays_exactly_the_uninterrupted_run(tmp_path, data_dir,
                                                        straight_run):
  resumed = tmp_path / 'resumed'
  train.train_and_evaluate(small_config(data_dir, max_steps=3), str(resumed))
  report = train.train_and_evaluate(small_config(data_dir, max_steps=6),
                                    str(resumed))
  # Same batches in the same order and the same state: identical losses.
  assert train_losses(resumed) == train_losses(straight_run)
  assert [s for s, _ in train_losses(straight_run)] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(
      report['loss'],
      json.load(open(straight_run / 'final_metrics.json'))['loss'], rtol=1e-6)


@pytest.fixture
def absl_flags_parsed():
  """grain's worker processes read absl flags, which `python -m
  danil_jax.main` (absl's app.run) parses; called as a library the trainer
  with workers raises UnparsedFlagAccessError without this."""
  if flags.FLAGS.is_parsed():
    yield
    return
  flags.FLAGS.mark_as_parsed()
  try:
    yield
  finally:
    flags.FLAGS.unparse_flags()


def test_grain_workers_resume_exactly(tmp_path, data_dir, absl_flags_parsed,
                                      capsys):
  """Real configs decode in 4 grain worker processes, the other tests in
  none. With 2 workers, a run that lost its last checkpoint (as if killed
  after step 4) resumes from step 4, the input position following from the
  step, and replays steps 5-6 and the evaluation (by the workers too) as the
  uninterrupted run did.
  """
  del absl_flags_parsed
  config = small_config(data_dir, num_workers=2, max_steps=6, method='base')
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  want = train.train_and_evaluate(config, str(straight))
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '6')
  capsys.readouterr()
  got = train.train_and_evaluate(config, str(resumed))
  assert 'Resuming from step 4' in capsys.readouterr().out
  assert train_losses(resumed) == train_losses(straight)
  assert [s for s, _ in train_losses(straight)] == [1, 2, 3, 4, 5, 6]
  assert got['confusion_matrix'] == want['confusion_matrix']
  assert got['loss'] == want['loss'] and got['num_examples'] == 800


def test_evaluation_batches_from_workers_equal_the_main_process(
    data_dir, absl_flags_parsed):
  """The whole test split through 2 grain workers gives the batches of the
  in-process path, in order, the last one padded and masked (96 does not
  divide 800)."""
  del absl_flags_parsed
  builder = data_prep.prepare('danil_demo', data_dir=data_dir)
  source = builder.as_data_source('test')
  pre = input_pipeline.Preprocessing(size=32, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, augment=False)
  batches = lambda workers: list(input_pipeline.eval_batches(
      source, global_batch_size=96, pre=pre, num_workers=workers))
  in_process, from_workers = batches(0), batches(2)
  assert len(in_process) == len(from_workers) == 9
  for want, got in zip(in_process, from_workers):
    assert want.keys() == got.keys() == {'image', 'label', 'mask'}
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert sum(int(b['mask'].sum()) for b in from_workers) == 800


def test_sigkill_then_rerun_resumes_and_finishes(tmp_path, data_dir):
  command = [sys.executable, '-m', 'danil_jax.main',
             '--config=configs/demo.py', f'--workdir={tmp_path}',
             f'--config.dataset.data_dir={data_dir}',
             '--config.log_every_steps=1', '--config.max_steps=400',
             '--config.checkpoint_every_steps=3',
             '--config.input.global_batch_size=16']
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  checkpoints = tmp_path / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if checkpoints.exists() and any(p.name.isdigit()
                                    for p in checkpoints.iterdir()):
      break
    time.sleep(0.5)
  assert process.poll() is None, 'the run ended before it was killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  # The rerun decodes in a grain worker: the trainer closes its iterator, so
  # no shared memory is left behind at exit.
  rerun = subprocess.run(command[:-3] + ['--config.max_steps=9',
                                         '--config.checkpoint_every_steps=3',
                                         '--config.input.global_batch_size=16',
                                         '--config.input.num_workers=1'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'leaked shared_memory' not in rerun.stderr, rerun.stderr[-3000:]
  assert 'Resuming from step' in rerun.stdout
  assert 'Final test metrics after 9 steps' in rerun.stdout
  steps = [r['step'] for r in read_log(tmp_path) if r['kind'] == 'train']
  assert steps == sorted(set(steps)) and steps[-1] == 9


def test_wrong_number_of_classes_is_a_clear_error(tmp_path, data_dir):
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.num_classes = 5
  with pytest.raises(ValueError, match='num_classes is 5.*4 classes'):
    train.train_and_evaluate(config, str(tmp_path))
