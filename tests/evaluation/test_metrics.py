"""metrics.py against independent numpy computations on hand-made cases."""

import itertools

import numpy as np
import pytest

from danil_jax.evaluation import metrics

NAMES = ['a', 'b', 'c', 'd']


def _probabilities(predictions, num_classes, rng, scores=None):
  """Probabilities whose argmax is `predictions` (random otherwise)."""
  p = rng.uniform(0.0, 0.5, (len(predictions), num_classes))
  p[np.arange(len(predictions)), predictions] = 1.0
  if scores is not None:
    p = scores
  return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _auroc(positive, scores):
  """Mann-Whitney: P(score of a positive > score of a negative), ties 1/2."""
  pos, neg = scores[positive], scores[~positive]
  pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
  return float(np.mean(pairs))


def _counts(labels, predictions, k):
  tp = np.sum((labels == k) & (predictions == k))
  fp = np.sum((labels != k) & (predictions == k))
  fn = np.sum((labels == k) & (predictions != k))
  return tp, fp, fn


def test_report_against_numpy_with_a_class_absent_from_both():
  rng = np.random.default_rng(0)
  # Class 3 ('d') is in neither labels nor predictions; class 2 is predicted
  # once but never a label (F1 0, counted in the mean).
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
  predictions = np.array([0, 1, 0, 1, 1, 0, 2, 0, 1, 1])
  probabilities = _probabilities(predictions, 4, rng)
  report = metrics.classification_report(labels, probabilities, NAMES)

  f1s, precisions, recalls = {}, {}, {}
  for k in range(3):
    tp, fp, fn = _counts(labels, predictions, k)
    precisions[k] = tp / (tp + fp) if tp + fp else 0.0
    recalls[k] = tp / (tp + fn) if tp + fn else 0.0
    f1s[k] = 2 * tp / (2 * tp + fp + fn)
  assert report['macro_f1'] == pytest.approx(np.mean(list(f1s.values())))
  assert report['per_class_f1'] == pytest.approx(
      {'a': f1s[0], 'b': f1s[1], 'c': 0.0, 'd': None})
  assert report['per_class_precision']['c'] == 0.0
  assert report['per_class_precision']['d'] is None
  assert report['per_class_precision']['a'] == pytest.approx(precisions[0])
  assert report['per_class_recall']['b'] == pytest.approx(recalls[1])
  assert report['accuracy'] == pytest.approx(np.mean(labels == predictions))
  # Balanced accuracy: mean recall over the classes that have examples.
  assert report['balanced_accuracy'] == pytest.approx(
      (recalls[0] + recalls[1]) / 2)
  # One-vs-rest AUROC needs positives and negatives: only 'a' and 'b'.
  auroc_a = _auroc(labels == 0, probabilities[:, 0])
  auroc_b = _auroc(labels == 1, probabilities[:, 1])
  assert report['per_class_auroc'] == pytest.approx(
      {'a': auroc_a, 'b': auroc_b, 'c': None, 'd': None})
  assert report['macro_auroc'] == pytest.approx((auroc_a + auroc_b) / 2)
  confusion = np.zeros((4, 4), int)
  np.add.at(confusion, (labels, predictions), 1)
  assert report['confusion_matrix'] == confusion.tolist()
  assert report['per_class_support'] == {'a': 5, 'b': 5, 'c': 0, 'd': 0}
  assert report['num_examples'] == 10


def test_auroc_uses_probabilities_not_predictions():
  labels = np.array([0, 1, 0, 1, 1, 0])
  scores = np.array([[0.9, 0.1], [0.45, 0.55], [0.6, 0.4], [0.2, 0.8],
                     [0.7, 0.3], [0.51, 0.49]], np.float32)
  report = metrics.classification_report(labels, scores, ['x', 'y'])
  assert report['per_class_auroc']['y'] == pytest.approx(
      _auroc(labels == 1, scores[:, 1]))
  assert report['per_class_auroc']['y'] == pytest.approx(7 / 9)


def test_report_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r'\(3, 2\).*4 labels and 2 classes'):
    metrics.classification_report(np.zeros(4, int), np.zeros((3, 2)),
                                  ['x', 'y'])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_quadratic_weighted_kappa_against_its_formula(seed):
  rng = np.random.default_rng(seed)
  k = 5
  labels = rng.integers(0, k, 40)
  predictions = np.clip(labels + rng.integers(-2, 3, 40), 0, k - 1)
  observed = np.zeros((k, k))
  np.add.at(observed, (labels, predictions), 1)
  expected = np.outer(np.bincount(labels, minlength=k),
                      np.bincount(predictions, minlength=k)) / len(labels)
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing='ij')
  weights = (i - j) ** 2 / (k - 1) ** 2
  kappa = 1 - np.sum(weights * observed) / np.sum(weights * expected)
  assert metrics.quadratic_weighted_kappa(labels, predictions, k) == (
      pytest.approx(kappa))


def _patient_auroc_numpy(groups, labels, tile_scores, positive, min_tiles):
  ids = sorted(set(groups))
  kept_scores, kept_positive = [], []
  for patient in ids:
    tiles = [i for i, g in enumerate(groups) if g == patient]
    if len(tiles) < min_tiles:
      continue
    kept_scores.append(np.mean([tile_scores[i] for i in tiles]))
    kept_positive.append(labels[tiles[0]] == positive)
  kept_positive, kept_scores = np.array(kept_positive), np.array(kept_scores)
  return _auroc(kept_positive, kept_scores), len(kept_scores)


def test_patient_level_auroc_against_numpy_with_known_groups():
  rng = np.random.default_rng(3)
  # Six patients, tile counts 12, 3, 10, 15, 11, 9: two (3 and 9 tiles)
  # fall under the 10-tile minimum. Positive class 0 (MSIMUT is label 0).
  sizes = {'P1': 12, 'P2': 3, 'P3': 10, 'P4': 15, 'P5': 11, 'P6': 9}
  patient_label = {'P1': 0, 'P2': 0, 'P3': 1, 'P4': 1, 'P5': 0, 'P6': 1}
  groups = [p for p, n in sizes.items() for _ in range(n)]
  labels = np.array([patient_label[p] for p in groups])
  probabilities = rng.dirichlet([1, 1], len(groups)).astype(np.float32)
  order = rng.permutation(len(groups))  # tiles in any order
  groups = [groups[i] for i in order]
  labels, probabilities = labels[order], probabilities[order]

  out = metrics.patient_level_auroc(groups, labels, probabilities, positive=0,
                                    min_tiles=10, num_bootstrap=200, seed=0)
  predicted_positive = (probabilities.argmax(1) == 0).astype(float)
  expected, num = _patient_auroc_numpy(groups, labels, predicted_positive, 0,
                                       10)
  expected_mean, _ = _patient_auroc_numpy(groups, labels, probabilities[:, 0],
                                          0, 10)
  assert out['patient_auroc'] == pytest.approx(expected)
  assert out['patient_auroc_mean_prob'] == pytest.approx(expected_mean)
  assert (out['num_patients'], out['num_patients_left_out']) == (num, 2) == (
      4, 2)
  assert out['num_patients_positive'] == 2
  for key in ('patient_auroc', 'patient_auroc_mean_prob'):
    low, high = out[key + '_ci95']
    assert 0.0 <= low <= out[key] <= high <= 1.0
  # A fixed seed gives the same interval.
  again = metrics.patient_level_auroc(groups, labels, probabilities,
                                      positive=0, min_tiles=10,
                                      num_bootstrap=200, seed=0)
  assert again == out


def test_patient_level_auroc_perfect_separation_and_one_class():
  groups = ['A'] * 3 + ['B'] * 3 + ['C'] * 3
  labels = np.array([0] * 3 + [1] * 3 + [1] * 3)
  probabilities = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 6, np.float32)
  out = metrics.patient_level_auroc(groups, labels, probabilities, positive=0,
                                    min_tiles=1, num_bootstrap=50)
  assert out['patient_auroc'] == 1.0
  assert out['patient_auroc_ci95'] == [1.0, 1.0]
  # Only one class of patients left: undefined, not a crash.
  out = metrics.patient_level_auroc(groups, labels, probabilities, positive=0,
                                    min_tiles=4, num_bootstrap=50)
  assert out['num_patients'] == 0 and out['patient_auroc'] is None
  assert out['patient_auroc_ci95'] == [None, None]


def test_patient_with_mixed_labels_is_an_error():
  with pytest.raises(ValueError, match="patient 'A' has tiles with different"):
    metrics.patient_level_auroc(['A', 'A'], np.array([0, 1]),
                                np.full((2, 2), 0.5), positive=0, min_tiles=1)


def _eval_config(**kw):
  from danil_jax.configs import default
  config = default.get_config().eval
  config.update(kw)
  return config


def test_benchmark_report_follows_the_config():
  labels = np.array([0, 1, 2, 2])
  probabilities = np.eye(3, dtype=np.float32)[[0, 2, 2, 1]]
  assert metrics.benchmark_report(_eval_config(), labels, probabilities,
                                  ['x', 'y', 'z'], {}) == {}
  out = metrics.benchmark_report(_eval_config(quadratic_kappa=True), labels,
                                 probabilities, ['x', 'y', 'z'], {})
  assert out == {'quadratic_kappa': pytest.approx(
      metrics.quadratic_weighted_kappa(labels, [0, 2, 2, 1], 3))}
  with pytest.raises(ValueError, match="patient_key='patient_id'.*'index'"):
    metrics.benchmark_report(
        _eval_config(patient_key='patient_id', patient_positive_class='x'),
        labels, probabilities, ['x', 'y', 'z'], {'index': np.arange(4)})


def test_dataset_configs_name_headline_metrics_the_report_has():
  from danil_jax.configs import aptos2019
  from danil_jax.configs import crc_msi
  from danil_jax.configs import demo
  from danil_jax.configs import ham10000
  keys = set(metrics.classification_report(
      np.array([0, 1]), np.eye(2), ['x', 'y'])) | {
          'loss', 'quadratic_kappa', 'patient_auroc',
          'patient_auroc_mean_prob'}
  for module in (aptos2019, crc_msi, demo, ham10000):
    config = module.get_config()
    assert set(config.eval.headline) <= keys, module.__name__
  assert ham10000.get_config().eval.headline[0] == 'balanced_accuracy'
  assert aptos2019.get_config().eval.headline[0] == 'quadratic_kappa'
  assert crc_msi.get_config().eval.headline[0] == 'patient_auroc'


def test_is_better_treats_undefined_as_worst():
  assert metrics.is_better(0.5, None) and not metrics.is_better(None, 0.1)
  assert metrics.is_better(0.6, 0.5) and not metrics.is_better(0.5, 0.5)


def test_format_report_leads_with_the_headline():
  report = metrics.classification_report(np.array([0, 1, 1]),
                                         np.eye(2)[[0, 1, 0]], ['x', 'y'])
  report['loss'] = 0.5
  text = metrics.format_report(report, ['x', 'y'],
                               ('balanced_accuracy', 'macro_f1'))
  assert text.splitlines()[0].startswith('balanced_accuracy 0.7500   '
                                         'macro_f1 0.6667')
  assert 'n/a' not in text


def test_bootstrap_ci_against_an_independent_bootstrap():
  """Percentile bootstrap over patients: an independent numpy bootstrap
  (other random stream) agrees within Monte-Carlo error; the seed fixes it."""
  rng = np.random.default_rng(5)
  positive = np.arange(40) < 15
  scores = rng.normal(positive * 0.8, 1.0)
  low, high = metrics.bootstrap_auroc_ci(positive, scores, num_samples=1000,
                                         seed=0)
  reference_rng = np.random.default_rng(123)
  values = []
  while len(values) < 1000:
    sample = reference_rng.integers(0, 40, 40)
    pos, neg = scores[sample][positive[sample]], scores[sample][
        ~positive[sample]]
    if len(pos) and len(neg):
      values.append(np.mean(pos[:, None] > neg[None, :]))
  assert low == pytest.approx(np.quantile(values, 0.025), abs=0.012)
  assert high == pytest.approx(np.quantile(values, 0.975), abs=0.012)
  assert metrics.bootstrap_auroc_ci(positive, scores, num_samples=1000,
                                    seed=0) == (low, high)
  assert metrics.bootstrap_auroc_ci(positive, scores, num_samples=1000,
                                    seed=1) != (low, high)
