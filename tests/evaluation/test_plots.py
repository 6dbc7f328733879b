"""The training-curve figure drawn from a metrics log, and its command."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from danil_jax.evaluation import plots
from danil_jax.runtime import run_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_draws_every_panel_into_a_png(tmp_path):
  records = [dict(kind='train', step=s, epoch=s / 10, ce=1.0 / s,
                  distraction=5.0 / s, misclassified=0.5 / s,
                  distraction_grad_share=1e-4 / s) for s in range(1, 21)]
  records += [dict(kind='eval', step=10 * e, epoch=e, split='test',
                   macro_f1=0.3 * e, accuracy=0.35 * e) for e in (1, 2)]
  path = plots.plot_curves(records, str(tmp_path / 'curves.png'), title='t')
  image = np.asarray(Image.open(path).convert('L'))
  assert image.shape[1] > 3 * image.shape[0]  # one row of panels
  # Something was drawn in every fifth of the figure (each panel's column).
  for column in np.array_split(image, 5, axis=1):
    assert (column < 128).mean() > 0.005


def test_a_log_without_danil_metrics_still_plots(tmp_path):
  records = [dict(kind='train', step=1, epoch=0.5, ce=1.0, distraction=0.0,
                  misclassified=0.4)]
  path = plots.plot_curves(records, str(tmp_path / 'c.png'))
  assert Image.open(path).size[0] > 0


def _plots_command(*args):
  return subprocess.run([sys.executable, '-m', 'danil_jax.plots', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_command_line_names_a_run_without_metrics(tmp_path):
  result = _plots_command(f'--workdir={tmp_path}')
  assert result.returncode == 2  # a usage error, as every command's
  assert 'no metrics' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 2


def test_command_line_draws_a_runs_curves_and_answers_help(tmp_path):
  metrics_log = run_log.MetricsLog(str(tmp_path))
  for step in (1, 2):
    metrics_log.write(dict(kind='train', step=step, epoch=step / 2, ce=1.0,
                           distraction=0.1, misclassified=0.5))
  result = _plots_command(f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f'wrote {tmp_path / plots.CURVES_FILE}'
  assert Image.open(tmp_path / plots.CURVES_FILE).size[0] > 0
  helped = _plots_command('--help')
  assert helped.returncode == 0 and '--workdir' in helped.stdout
