"""Training curves of a run, drawn from its `metrics.jsonl`.

  python -m danil_jax.plots --workdir=/tmp/danil_demo   # writes curves.png

The trainer redraws `WORKDIR/curves.png` after every evaluation. The panels
are what tells a user whether DANIL acts at all: the cross-entropy, Ld
(Eq. 5), the misclassified fraction (only those samples carry Ld, Algorithm 1)
and the share of the parameter gradient that lam * Ld contributes (Eq. 6),
next to the evaluation macro-F1 and accuracy.
"""

import argparse
import io

from etils import epath

from danil_jax import run_log

CURVES_FILE = 'curves.png'

_TRAIN_PANELS = (
    ('ce', 'cross-entropy L+c (Eq. 3)', 'linear'),
    ('distraction', 'Ld (Eq. 5)', 'log'),
    ('misclassified', 'misclassified fraction', 'linear'),
    ('distraction_grad_share', 'share of grad from lam*Ld', 'log'),
)


def plot_curves(records: list[dict], path, title: str = '') -> str:
  """Draws the train and eval curves of `records` into `path` (a PNG).

  `path` may be anything etils.epath handles, `gs://...` included.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  train = [r for r in records if r.get('kind') == 'train']
  evals = [r for r in records if r.get('kind') == 'eval']
  fig, axes = plt.subplots(1, len(_TRAIN_PANELS) + 1, figsize=(20, 3.6))
  for ax, (key, label, scale) in zip(axes, _TRAIN_PANELS):
    points = [(r['epoch'], r[key]) for r in train
              if key in r and (scale != 'log' or r[key] > 0)]
    if points:
      ax.plot(*zip(*points), lw=1)
      ax.set_yscale(scale)
    else:
      ax.text(0.5, 0.5, 'not logged', ha='center', va='center',
              transform=ax.transAxes)
    ax.set_title(label, fontsize=10)
    ax.set_xlabel('epoch')
  ax = axes[-1]
  for key in ('macro_f1', 'accuracy'):
    points = [(r['epoch'], r[key]) for r in evals if key in r]
    if points:
      ax.plot(*zip(*points), marker='o', label=key.replace('_', '-'))
  ax.set_title(f"{evals[-1]['split'] if evals else 'eval'} metrics",
               fontsize=10)
  ax.set_xlabel('epoch')
  ax.set_ylim(0, 1)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return str(path)


def save_png(fig, path) -> None:
  """Writes `fig` through a buffer, so `path` may be anything etils.epath
  handles (a local disk, gs://...)."""
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=90)
  epath.Path(path).write_bytes(png.getvalue())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m danil_jax.plots',
      description='Draws WORKDIR/curves.png from WORKDIR/metrics.jsonl.')
  parser.add_argument('--workdir', required=True, help='run directory')
  workdir = parser.parse_args(argv).workdir
  records = run_log.MetricsLog(workdir).read()
  if not records:
    parser.error(f'no metrics in {epath.Path(workdir) / "metrics.jsonl"}')
  path = plot_curves(records, epath.Path(workdir) / CURVES_FILE,
                     title=workdir)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
