"""python -m danil_jax.data_prep.build: builds, reuses, rebuilds, reports bad input."""

import os
import subprocess
import sys

from danil_jax.data_prep import build
from danil_jax.data_prep import testing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))


def test_builds_then_reuses_then_rebuilds(tmp_path, capsys):
  args = ['crc_msi', f'--manual_dir={testing.dummy_dir("crc_msi")}',
          f'--data_dir={tmp_path}']
  assert build.main(args) == 0
  out = capsys.readouterr().out
  for line in ('train: 21 examples', 'validation: 3 examples',
               'test: 12 examples'):
    assert line in out
  assert build.main(args) == 0
  assert 'already built' in capsys.readouterr().out
  assert build.main(args + ['--overwrite']) == 0
  assert 'train: 21 examples' in capsys.readouterr().out


def test_config_flag_selects_the_builder_config(tmp_path, capsys):
  assert build.main(['ham10000', f'--data_dir={tmp_path}', '--config=random',
                     f'--manual_dir={testing.dummy_dir("ham10000")}']) == 0
  assert 'ham10000/random' in capsys.readouterr().out
  assert os.path.isdir(tmp_path / 'ham10000' / 'random' / '1.0.0')


def test_missing_archives_exit_1_with_instructions(tmp_path, capsys):
  manual = tmp_path / 'nothing_here'
  assert build.main(['aptos2019', f'--manual_dir={manual}',
                     f'--data_dir={tmp_path / "data"}']) == 1
  err = capsys.readouterr().err
  assert f'error: Manual directory {manual} does not exist' in err
  assert 'aptos2019-blindness-detection.zip' in err
  assert 'Traceback' not in err


def test_runs_as_a_module(tmp_path):
  """The documented command line, in a fresh interpreter."""
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.data_prep.build', 'crc_msi',
       f'--manual_dir={tmp_path / "missing"}', f'--data_dir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert 'CRC_DX_TRAIN_MSIMUT.zip' in result.stderr
  assert 'Traceback' not in result.stderr
