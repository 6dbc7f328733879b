"""Classification metrics of the paper: macro-averaged F1 and accuracy (§3)."""

import numpy as np
from sklearn import metrics as skm


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names) -> dict:
  """Macro-F1 (the paper's 'averaged F1'), accuracy, per-class F1, confusion.

  All classes are scored, including those absent from `labels`, so per-class
  lists always line up with `class_names`.
  """
  class_ids = np.arange(len(class_names))
  per_class_f1 = skm.f1_score(labels, predictions, labels=class_ids,
                              average=None, zero_division=0.0)
  return dict(
      macro_f1=float(np.mean(per_class_f1)),
      accuracy=float(skm.accuracy_score(labels, predictions)),
      per_class_f1={name: float(f1)
                    for name, f1 in zip(class_names, per_class_f1)},
      confusion_matrix=skm.confusion_matrix(
          labels, predictions, labels=class_ids).tolist(),
      num_examples=int(len(labels)),
  )


def format_report(report: dict, class_names) -> str:
  """A human-readable summary with the confusion matrix (rows: true class)."""
  width = max(8, max(len(n) for n in class_names) + 1)
  lines = [f"macro-F1 {report['macro_f1']:.4f}   accuracy "
           f"{report['accuracy']:.4f}   ({report['num_examples']} images)",
           'per-class F1: ' + ', '.join(
               f'{n} {f:.3f}' for n, f in report['per_class_f1'].items()),
           'confusion matrix (rows: true, columns: predicted):',
           ' ' * width + ''.join(f'{n[:width - 1]:>{width}}'
                                 for n in class_names)]
  for name, row in zip(class_names, report['confusion_matrix']):
    lines.append(f'{name[:width - 1]:>{width}}'
                 + ''.join(f'{v:>{width}}' for v in row))
  return '\n'.join(lines)
