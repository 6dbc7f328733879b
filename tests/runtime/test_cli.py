"""The command line every command shares (danil_jax/runtime/cli.py).

A missing config file, a misspelt key and a bad value each end with at most
5 lines on stderr, naming the flag (and the nearest valid key), and a
non-zero exit; --print_config prints every key; the libraries' noise is
dropped from the logs and real warnings kept. The commands run as
subprocesses, side by side: none of these loads JAX.
"""

import logging
import os
import subprocess
import sys

from absl import flags
import pytest

from danil_jax.configs import default
from danil_jax.runtime import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEMO = ('-m', 'danil_jax.main', '--config=configs/demo.py')

CASES = {
    'missing config file': (
        ('-m', 'danil_jax.main', '--config=configs/no_such.py',
         '--workdir=/tmp/unused'), 'No such file or directory'),
    'misspelt key': (DEMO + ('--workdir=/tmp/unused', '--config.optim.lr=0.1'),
                     '--config.optim.lr: no such key; the nearest is '
                     '--config.optim.learning_rate'),
    'misspelt section': (DEMO + ('--config.optimizer.momentum=0.5',),
                         'the nearest is --config.optim.momentum'),
    'bad value': (DEMO + ('--workdir=/tmp/unused',
                          '--config.optim.learning_rate=fast'),
                  "--config.optim.learning_rate=fast: could not convert"),
    'misspelt key of a command on a run': (
        ('-m', 'danil_jax.evaluate', '--workdir=/tmp/unused',
         '--config.distributd=True'), 'the nearest is --config.distributed'),
    'misspelt key of the paper grid': (
        ('-m', 'danil_jax.paper', '--workdir=/tmp/unused',
         '--config.danil.lamda=1'), 'the nearest is --config.danil.lam'),
    'no workdir': (DEMO, '--workdir is required'),
    'removed key': (DEMO + ('--workdir=/tmp/unused',
                            '--config.faults.preemption_sync_every_steps=5'),
                    '--config.faults.preemption_sync_every_steps no longer '
                    "exists: every step asks JAX's preemption sync point"),
}


def _wait(procs):
  """{name: (status, stdout, stderr)} of subprocesses started together."""
  results = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    results[name] = (proc.returncode, out, err)
  return results


@pytest.fixture(scope='module')
def finished():
  """{case: (status, stdout, stderr)}, the commands run side by side."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = {name: subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, (args, _) in CASES.items()}
  procs['print_config'] = subprocess.Popen(
      [sys.executable, *DEMO, '--print_config',
       '--config.optim.learning_rate=0.5'], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return _wait(procs)


@pytest.mark.parametrize('case', sorted(CASES))
def test_an_error_fits_on_a_screen(finished, case):
  status, _, stderr = finished[case]
  assert status != 0
  assert len(stderr.strip().splitlines()) <= 5, stderr
  assert 'Traceback' not in stderr
  assert CASES[case][1] in stderr, stderr


def test_print_config_prints_every_key_with_the_overrides(finished):
  status, stdout, stderr = finished['print_config']
  assert status == 0, stderr
  lines = stdout.splitlines()
  keys = {line.split(' = ')[0] for line in lines}
  every_key = {key for key, _ in cli._leaves(default.get_config())}
  assert every_key <= keys, sorted(every_key - keys)
  assert 'optim.learning_rate = 0.5' in lines
  assert 'dataset.image_size = 32' in lines  # danil_jax/configs/demo.py's, not default


# From a directory without configs/: the package's configs by name.
ELSEWHERE = {
    'configs/NAME.py': (('--config=configs/crc_msi.py',), "'crc_msi'"),
    'NAME, space-separated': (('--config', 'ham10000'), "'ham10000'"),
}


@pytest.fixture(scope='module')
def elsewhere(tmp_path_factory):
  cwd = tmp_path_factory.mktemp('elsewhere')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = {name: subprocess.Popen(
      [sys.executable, '-m', 'danil_jax.main', *args, '--print_config'],
      cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for name, (args, _) in ELSEWHERE.items()}
  procs['missing'] = subprocess.Popen(
      [sys.executable, '-m', 'danil_jax.main', '--config=configs/nope.py',
       '--print_config'], cwd=cwd, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  # A reader that leaves at once: the writer's broken pipe is no traceback.
  procs['closed pipe'] = subprocess.Popen(
      f'"{sys.executable}" -m danil_jax.main --config=demo --print_config '
      '| true; exit ${PIPESTATUS[0]}', shell=True, executable='/bin/bash',
      cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  return _wait(procs)


@pytest.mark.parametrize('case', sorted(ELSEWHERE))
def test_the_shipped_configs_are_found_from_any_directory(elsewhere, case):
  status, stdout, stderr = elsewhere[case]
  assert status == 0, stderr
  assert f'dataset.name = {ELSEWHERE[case][1]}' in stdout.splitlines()


def test_a_missing_config_lists_the_shipped_ones(elsewhere):
  status, _, stderr = elsewhere['missing']
  assert status == 2 and len(stderr.strip().splitlines()) <= 5, stderr
  assert 'No such file' in stderr and 'crc_msi, default, demo' in stderr


def test_print_config_into_a_closed_pipe(elsewhere):
  status, _, stderr = elsewhere['closed pipe']
  assert status == 0 and 'Traceback' not in stderr, stderr


def _record(path: str, message: str) -> logging.LogRecord:
  return logging.LogRecord('absl', logging.WARNING, path, 1, message, (),
                           None)


def test_noise_is_dropped_and_real_warnings_kept():
  assert not flags.FLAGS['verbosity'].present
  # As evaluate, predict and response_maps printed them before their result.
  dropped = [
      _record('/site-packages/orbax/checkpoint/checkpoint_manager.py',
              'CheckpointManagerOptions.read_only=True, setting '
              'save_interval_steps=0.'),
      _record('/site-packages/orbax/checkpoint/checkpoint_manager.py',
              'Given directory is read only=/tmp/w/checkpoints'),
      _record('/site-packages/tensorflow_datasets/core/features/'
              'image_feature.py', 'OpenCV is not installed. We recommend '
              'using OpenCV because it is faster according to our '
              'benchmarks. Defaulting to PIL to decode images...')]
  kept = [_record('/site-packages/orbax/checkpoint_manager.py',
                  'Checkpoint at step 3 is corrupt'),
          _record('/danil_jax/runtime/faults.py',
                  'OpenCV is not installed'),  # the same words elsewhere
          _record('/site-packages/tfds/file_utils.py',
                  'Variant folder has no dataset_info.json')]
  assert not any(cli._drop_noise(r) for r in dropped)
  assert all(cli._drop_noise(r) for r in kept)
