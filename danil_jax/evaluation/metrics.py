"""Classification metrics: the paper's (§3) and each benchmark's own.

All are computed with scikit-learn from the labels and the float32 softmax
probabilities of an evaluation (predictions are their argmax):

- every data set: macro-F1 (the paper's "averaged F1"), accuracy, balanced
  accuracy (mean per-class recall; the ISIC 2018 Task 3 ranking metric,
  "balanced multiclass accuracy", for HAM10000), per-class precision, recall
  and F1, one-vs-rest AUROC per class and their macro mean, the confusion
  matrix;
- APTOS 2019: quadratic weighted kappa (the competition metric);
- CRC-MSI: patient-level AUROC as Kather et al. (Nature Medicine 2019)
  compute it, with a 95% bootstrap confidence interval.

Classes absent from a split. A class with no example among the labels and
none among the predictions has no F1 (0/0 precision and recall): it is left
out of macro-F1 and its per-class precision, recall and F1 are reported as
null. This is scikit-learn's own `average='macro'` (which averages over the
classes present in labels or predictions); scoring such a class 0 would drag
the mean down for the composition of a small split, not for any error of the
model. A class present in one of the two but not the other scores 0 as usual
(it was missed, or predicted wrongly). Likewise, a class's one-vs-rest AUROC
needs positives and negatives: without both it is null and left out of the
macro mean. On the benchmarks' full test splits every class is present and
these rules change nothing.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

# Metrics for which a lower value is better (model selection).
LOWER_IS_BETTER = ('loss',)


def classification_report(labels: np.ndarray, probabilities: np.ndarray,
                          class_names) -> dict:
  """Every data set's metrics from labels [N] and probabilities [N, K]."""
  labels = np.asarray(labels)
  probabilities = np.asarray(probabilities)
  num_classes = len(class_names)
  if probabilities.shape != (len(labels), num_classes):
    raise ValueError(f'probabilities of shape {probabilities.shape} do not '
                     f'match {len(labels)} labels and {num_classes} classes')
  predictions = np.argmax(probabilities, axis=-1)
  class_ids = np.arange(num_classes)
  present = np.isin(class_ids, labels) | np.isin(class_ids, predictions)
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, predictions, labels=class_ids, zero_division=0.0)
  aurocs = [one_vs_rest_auroc(labels == k, probabilities[:, k])
            for k in class_ids]

  def per_class(values, keep):
    return {name: (float(v) if ok else None)
            for name, v, ok in zip(class_names, values, keep)}

  valid_aurocs = [a for a in aurocs if a is not None]
  return dict(
      macro_f1=float(np.mean(f1[present])) if present.any() else None,
      accuracy=float(skm.accuracy_score(labels, predictions)),
      balanced_accuracy=float(np.mean(recall[support > 0])),
      macro_auroc=float(np.mean(valid_aurocs)) if valid_aurocs else None,
      per_class_precision=per_class(precision, present),
      per_class_recall=per_class(recall, present),
      per_class_f1=per_class(f1, present),
      per_class_auroc=per_class(aurocs, [a is not None for a in aurocs]),
      per_class_support={n: int(s) for n, s in zip(class_names, support)},
      confusion_matrix=skm.confusion_matrix(
          labels, predictions, labels=class_ids).tolist(),
      num_examples=int(len(labels)),
      # Examples whose probabilities hold NaN/Inf: the model diverged on them.
      num_nonfinite=int(np.sum(~np.all(np.isfinite(probabilities), axis=-1))),
  )


def one_vs_rest_auroc(is_positive: np.ndarray, scores: np.ndarray):
  """ROC AUC of `scores` for the positives; None without both classes, or
  when a score is NaN/Inf (a diverged model: no ranking to score)."""
  is_positive = np.asarray(is_positive, bool)
  if is_positive.all() or not is_positive.any():
    return None
  if not np.all(np.isfinite(scores)):
    return None
  return float(skm.roc_auc_score(is_positive, scores))


def quadratic_weighted_kappa(labels, predictions, num_classes: int) -> float:
  """Cohen's kappa with quadratic weights over grades 0..K-1 (APTOS 2019)."""
  return float(skm.cohen_kappa_score(labels, predictions,
                                     labels=np.arange(num_classes),
                                     weights='quadratic'))


def patient_scores(patients, labels, tile_scores, *, min_tiles: int):
  """Per patient: label, the mean of its tiles' scores, its tile count.

  A patient's tiles must share a label; patients with fewer than
  `min_tiles` tiles are left out. Returns (patient ids, labels, scores,
  number of patients left out), patients sorted by id.
  """
  patients = np.asarray(patients)
  labels, tile_scores = np.asarray(labels), np.asarray(tile_scores, float)
  ids, inverse, counts = np.unique(patients, return_inverse=True,
                                   return_counts=True)
  sums = np.bincount(inverse, weights=tile_scores, minlength=len(ids))
  low = np.full(len(ids), np.iinfo(np.int64).max)
  high = np.full(len(ids), np.iinfo(np.int64).min)
  np.minimum.at(low, inverse, labels)
  np.maximum.at(high, inverse, labels)
  patient_labels, mixed = low, np.flatnonzero(low != high)
  if len(mixed):
    raise ValueError(f'patient {str(ids[mixed[0]])!r} has tiles with different '
                     'labels; expected one label per patient')
  keep = counts >= min_tiles
  return (ids[keep], patient_labels[keep], sums[keep] / counts[keep],
          int(np.sum(~keep)))


def bootstrap_auroc_ci(is_positive, scores, *, num_samples: int = 1000,
                       seed: int = 0, level: float = 0.95):
  """Percentile bootstrap CI of the AUROC, resampling cases with replacement.

  Resamples that lack positives or negatives are drawn again (skipped);
  returns (low, high), or (None, None) when the AUROC is undefined.
  """
  is_positive, scores = np.asarray(is_positive, bool), np.asarray(scores)
  if one_vs_rest_auroc(is_positive, scores) is None:
    return None, None
  rng = np.random.default_rng(seed)
  values, n = [], len(scores)
  while len(values) < num_samples:
    sample = rng.integers(0, n, n)
    value = one_vs_rest_auroc(is_positive[sample], scores[sample])
    if value is not None:
      values.append(value)
  alpha = (1.0 - level) / 2
  low, high = np.quantile(values, [alpha, 1.0 - alpha])
  return float(low), float(high)


def patient_level_auroc(patients, labels, probabilities, *, positive: int,
                        min_tiles: int = 10, num_bootstrap: int = 1000,
                        seed: int = 0) -> dict:
  """Kather et al. 2019: the AUROC of a patient-level score over patients.

  Score: the fraction of the patient's tiles predicted `positive` (argmax),
  patients with fewer than `min_tiles` tiles left out; 95% bootstrap CI over
  patients with a fixed seed. The `_mean_prob` variant scores a patient by
  the mean of its tiles' probabilities of `positive` instead.
  """
  probabilities = np.asarray(probabilities)
  predicted_positive = np.argmax(probabilities, -1) == positive
  out = {}
  for suffix, tile_scores in (('', predicted_positive.astype(float)),
                              ('_mean_prob', probabilities[:, positive])):
    _, patient_labels, scores, left_out = patient_scores(
        patients, labels, tile_scores, min_tiles=min_tiles)
    is_positive = patient_labels == positive
    low, high = bootstrap_auroc_ci(is_positive, scores,
                                   num_samples=num_bootstrap, seed=seed)
    out[f'patient_auroc{suffix}'] = one_vs_rest_auroc(is_positive, scores)
    out[f'patient_auroc{suffix}_ci95'] = [low, high]
  out['num_patients'] = int(len(patient_labels))
  out['num_patients_positive'] = int(np.sum(is_positive))
  out['num_patients_left_out'] = left_out
  return out


def benchmark_report(eval_config, labels, probabilities, class_names,
                     metadata: dict) -> dict:
  """The data set's own metrics that `eval_config` asks for."""
  out = {}
  if eval_config.get('quadratic_kappa', False):
    out['quadratic_kappa'] = quadratic_weighted_kappa(
        labels, np.argmax(probabilities, -1), len(class_names))
  patient_key = eval_config.get('patient_key', '')
  if patient_key:
    if patient_key not in metadata:
      raise ValueError(f'config.eval.patient_key={patient_key!r} is not a '
                       f'feature of the split; it has {sorted(metadata)}')
    positive = list(class_names).index(eval_config.patient_positive_class)
    out.update(patient_level_auroc(
        metadata[patient_key], labels, probabilities, positive=positive,
        min_tiles=eval_config.patient_min_tiles,
        num_bootstrap=eval_config.bootstrap_samples,
        seed=eval_config.bootstrap_seed))
  return out


def is_better(value, best) -> bool:
  """Whether `value` beats `best` for a higher-is-better metric; None (an
  undefined metric) loses to any number."""
  if value is None:
    return False
  return best is None or value > best


def _fmt(value) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, (list, tuple)):
    return '[' + ', '.join(_fmt(v) for v in value) + ']'
  return f'{value:.4f}' if isinstance(value, float) else str(value)


def format_headline(report: dict, headline) -> str:
  return '   '.join(f'{k} {_fmt(report.get(k))}' for k in headline)


def format_report(report: dict, class_names, headline=()) -> str:
  """A human-readable summary led by the `headline` metrics, then the
  others, per-class numbers and the confusion matrix (rows: true class)."""
  width = max(8, max(len(n) for n in class_names) + 1)
  head = format_headline(report, headline)
  rest = [k for k in ('macro_f1', 'accuracy', 'balanced_accuracy',
                      'macro_auroc', 'quadratic_kappa', 'patient_auroc',
                      'patient_auroc_ci95', 'patient_auroc_mean_prob',
                      'patient_auroc_mean_prob_ci95', 'num_patients', 'loss')
          if k in report and k not in headline]
  calibration = [k for k in ('ece', 'ece_calibrated', 'temperature', 'brier',
                             'brier_calibrated', 'tta')
                 if k in report and k not in headline]
  lines = []
  if head:
    lines.append(f'{head}   ({report["num_examples"]} images)')
  lines.append('   '.join(f'{k} {_fmt(report[k])}' for k in rest))
  if calibration:
    lines.append('   '.join(f'{k} {_fmt(report[k])}' for k in calibration)
                 + (f"   ({report['calibration']})"
                    if 'calibration' in report else ''))
  lines.append(' ' * width + ''.join(
      f'{n[:width - 1]:>{width}}' for n in class_names))
  for key in ('precision', 'recall', 'f1', 'auroc'):
    values = report[f'per_class_{key}']
    lines.append(f'{key:>{width}}' + ''.join(
        f'{_fmt(values[n])[:width - 1]:>{width}}' for n in class_names))
  lines.append('confusion matrix (rows: true, columns: predicted):')
  for name, row in zip(class_names, report['confusion_matrix']):
    lines.append(f'{name[:width - 1]:>{width}}'
                 + ''.join(f'{v:>{width}}' for v in row))
  return '\n'.join(lines)
