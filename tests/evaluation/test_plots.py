"""The training-curve figure drawn from a metrics log."""

import numpy as np
from PIL import Image

from danil_jax import plots as plots_command
from danil_jax.evaluation import plots


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


def test_command_line_names_a_run_without_metrics(tmp_path, capsys):
  import pytest
  with pytest.raises(SystemExit):
    plots_command.main([f'--workdir={tmp_path}'])
  assert 'no metrics' in capsys.readouterr().err
