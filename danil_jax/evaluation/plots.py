"""PNG figures of a run: its training curves, and an evaluation's confusion
matrix, ROC curves, reliability diagram and response maps.

The trainer redraws `WORKDIR/curves.png` after every evaluation
(`plot_curves`; `python -m danil_jax.plots --workdir=DIR` for any run). Its
panels are what tells a user whether DANIL acts at all: the cross-entropy,
Ld (Eq. 5), the misclassified fraction (only those samples carry Ld,
Algorithm 1) and the share of the parameter gradient that lam * Ld
contributes (Eq. 6), next to the evaluation macro-F1 and accuracy.
"""

import io

from etils import epath
import numpy as np
from sklearn import metrics as skm

from danil_jax.evaluation import calibration

CURVES_FILE = 'curves.png'

_TRAIN_PANELS = (
    ('ce', 'cross-entropy L+c (Eq. 3)', 'linear'),
    ('distraction', 'Ld (Eq. 5)', 'log'),
    ('misclassified', 'misclassified fraction', 'linear'),
    ('distraction_grad_share', 'share of grad from lam*Ld', 'log'),
)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_curves(records: list[dict], path, title: str = '') -> str:
  """Draws the train and eval curves of `records` into `path` (a PNG).

  `path` may be anything etils.epath handles, `gs://...` included.
  """
  plt = _pyplot()
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


def confusion_matrix(matrix, class_names, path: str, title: str = '') -> str:
  """Counts, with each row's share (recall) as the colour."""
  plt = _pyplot()
  matrix = np.asarray(matrix)
  rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  size = 1.6 + 0.7 * len(class_names)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=8,
              color='white' if rows[i, j] > 0.5 else 'black')
  ax.set_xticks(range(len(class_names)), class_names, rotation=45,
                ha='right', fontsize=8)
  ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  fig.colorbar(image, ax=ax, label='share of the true class')
  ax.set_title(title or 'confusion matrix', fontsize=9)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def roc_curves(labels, probabilities, class_names, path: str,
               title: str = '') -> str:
  """One-vs-rest ROC curve of every class that has positives and negatives
  (and finite scores: a diverged model has no ranking to draw)."""
  plt = _pyplot()
  labels, probabilities = np.asarray(labels), np.asarray(probabilities)
  fig, ax = plt.subplots(figsize=(5, 5))
  for k, name in enumerate(class_names):
    positive = labels == k
    if (positive.all() or not positive.any()
        or not np.all(np.isfinite(probabilities[:, k]))):
      continue
    fpr, tpr, _ = skm.roc_curve(positive, probabilities[:, k])
    ax.plot(fpr, tpr, lw=1,
            label=f'{name} (AUC {skm.auc(fpr, tpr):.3f})')
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title or 'ROC, one vs rest', fontsize=9)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def reliability_diagram(labels, probabilities, path: str, *,
                        calibrated=None, temperature=None,
                        title: str = '') -> str:
  """Accuracy against confidence in calibration.NUM_BINS equal-width bins
  (top label), the bars' share of images below; with temperature scaling
  the calibrated probabilities' points beside. A calibrated model lies on
  the diagonal; bars below it are over-confident."""
  plt = _pyplot()
  num_bins = calibration.NUM_BINS
  edges = np.linspace(0, 1, num_bins + 1)
  centres, width = (edges[:-1] + edges[1:]) / 2, 1 / num_bins
  fig, (ax, hist) = plt.subplots(
      2, 1, figsize=(5, 6), sharex=True,
      gridspec_kw=dict(height_ratios=(3, 1)))
  series = [('uncalibrated', probabilities, 'C0')]
  if calibrated is not None:
    series.append((f'temperature {temperature:.3g}', calibrated, 'C1'))
  for index, (name, probs, colour) in enumerate(series):
    ece = calibration.expected_calibration_error(labels, probs)
    if ece is None:  # non-finite: nothing to bin
      continue
    count, accuracy, _ = calibration.reliability_bins(labels, probs)
    used = count > 0
    offset = (index - (len(series) - 1) / 2) * width / len(series)
    ax.bar(centres[used] + offset, accuracy[used], width / len(series),
           color=colour, alpha=0.75, edgecolor='k', lw=0.4,
           label=f'{name} (ECE {ece:.3f})')
    hist.bar(centres + offset, count / max(count.sum(), 1),
             width / len(series), color=colour, alpha=0.75)
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy')
  ax.set_title(title or 'reliability diagram', fontsize=9)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc='upper left')
  hist.set_xlabel(f'confidence (max probability, {num_bins} bins)')
  hist.set_ylabel('share of images')
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def response_maps(maps: dict, class_names, pre, path: str,
                  title: str = '', *, runs=()) -> str:
  """The paper's Fig. 3: image, |A+|, |A-| per row (same colour scale).

  `runs`: [(name, maps)] of several models on the images of `maps` (the
  same indices), drawn as a pair of |A+|, |A-| columns each, one colour
  scale a row; by default `maps` alone, unnamed.
  """
  plt = _pyplot()
  named = list(runs) or [('', maps)]
  num = len(maps['indices'])
  fig, axes = plt.subplots(num, 1 + 2 * len(named),
                           figsize=(2.5 * (1 + 2 * len(named)), 2.6 * num),
                           squeeze=False)
  shown = np.clip(maps['images'] * np.asarray(pre.std) + np.asarray(pre.mean),
                  0, 1)
  for row in range(num):
    magnitudes = [(np.sqrt(np.sum(m['a_plus'][row] ** 2, -1)),
                   np.sqrt(np.sum(m['a_minus'][row] ** 2, -1)))
                  for _, m in named]
    vmax = max([a.max() for pair in magnitudes for a in pair]
               + [1e-12])  # one scale per row
    label = class_names[maps['labels'][row]]
    prediction = class_names[maps['prediction'][row]]
    panels = [(shown[row], f'#{maps["indices"][row]} label {label}\n'
               f'predicted {prediction}', None)]
    for (name, m), (a_plus, a_minus) in zip(named, magnitudes):
      prefix = f'{name}: ' if name else ''
      if name:
        prefix += f'pred {class_names[m["prediction"][row]]}\n'
      panels += [(a_plus, f'{prefix}|A+| (y+ = {label})', 'inferno'),
                 (a_minus, f'|A-| (y- = {class_names[m["y_minus"][row]]})',
                  'inferno')]
    for ax, (image, caption, cmap) in zip(axes[row], panels):
      ax.imshow(image, cmap=cmap, vmin=0 if cmap else None,
                vmax=vmax if cmap else None)
      ax.set_title(caption, fontsize=8)
      ax.axis('off')
    for column, (_, m) in enumerate(named):
      axes[row, 2 + 2 * column].text(
          0.5, -0.08, f"||A+ - A-||^2 = {m['distance'][row]:.3g}",
          transform=axes[row, 2 + 2 * column].transAxes, ha='center',
          va='top', fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path
