"""The trainer end to end on the embedded demo data set."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import demo
from danil_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def small_config(data_dir, **overrides):
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.max_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.input.global_batch_size = 16
  config.input.eval_batch_size = 128
  for key, value in overrides.items():
    config[key] = value
  config.lock()
  return config


def read_log(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('method', ['danil', 'ohem', 'base'])
def test_runs_every_method_and_evaluates_the_whole_test_split(
    tmp_path, data_dir, method):
  report = train.train_and_evaluate(small_config(data_dir, method=method),
                                    str(tmp_path))
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
      assert 0.0 <= record['distraction_grad_share'] <= 1.0
    else:
      assert record['distraction'] == 0.0
  assert (tmp_path / 'curves.png').stat().st_size > 0
  final = json.load(open(tmp_path / 'final_metrics.json'))
  assert final['accuracy'] == report['accuracy']


def test_resuming_replays_exactly_the_uninterrupted_run(tmp_path, data_dir):
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  train.train_and_evaluate(small_config(data_dir, max_steps=6), str(straight))
  train.train_and_evaluate(small_config(data_dir, max_steps=3), str(resumed))
  report = train.train_and_evaluate(small_config(data_dir, max_steps=6),
                                    str(resumed))
  losses = lambda w: [(r['step'], r['loss']) for r in read_log(w)
                      if r['kind'] == 'train']
  # Same batches in the same order and the same state: identical losses.
  assert losses(resumed) == losses(straight)
  assert [s for s, _ in losses(straight)] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(
      report['loss'], json.load(open(straight / 'final_metrics.json'))['loss'],
      rtol=1e-6)


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
  rerun = subprocess.run(command[:-3] + ['--config.max_steps=9',
                                         '--config.checkpoint_every_steps=3',
                                         '--config.input.global_batch_size=16'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
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
