"""calibration.py against hand-computed cases and independent numpy code."""

import numpy as np
import pytest

from danil_jax.evaluation import calibration
from danil_jax.evaluation import scoring as evaluation


def _ece_by_loop(labels, probabilities, num_bins=15):
  """Guo et al. 2017 written out: one boolean mask per bin (lo, hi]."""
  confidence = probabilities.max(1)
  correct = probabilities.argmax(1) == labels
  total = 0.0
  for m in range(num_bins):
    lo, hi = m / num_bins, (m + 1) / num_bins
    in_bin = (confidence > lo) & (confidence <= hi)
    if m == 0:
      in_bin |= confidence == 0
    if in_bin.any():
      total += in_bin.sum() * abs(correct[in_bin].mean()
                                  - confidence[in_bin].mean())
  return total / len(labels)


def test_ece_of_a_hand_computed_case():
  # Confidences 0.9, 0.9 (bin 13/15 < c <= 14/15), 0.6, 0.55 (8/15 < c <=
  # 9/15) and 0.4 (bin 5/15 < c <= 6/15).
  probabilities = np.array([[0.9, 0.1, 0.0],    # label 0: correct
                            [0.05, 0.9, 0.05],  # label 0: wrong
                            [0.6, 0.3, 0.1],    # label 0: correct
                            [0.2, 0.25, 0.55],  # label 2: correct
                            [0.4, 0.35, 0.25]])  # label 1: wrong
  labels = np.array([0, 0, 0, 2, 1])
  # Bin of 0.9: accuracy 1/2, confidence 0.9 -> 2/5 * 0.4
  # bin of 0.6, 0.55: accuracy 1, confidence 0.575 -> 2/5 * 0.425
  # bin of 0.4: accuracy 0 -> 1/5 * 0.4
  expected = 2 / 5 * 0.4 + 2 / 5 * 0.425 + 1 / 5 * 0.4
  assert calibration.expected_calibration_error(
      labels, probabilities) == pytest.approx(expected)
  count, accuracy, confidence = calibration.reliability_bins(labels,
                                                             probabilities)
  assert count.sum() == 5 and count[13] == 2 and count[8] == 2
  assert count[5] == 1
  assert accuracy[13] == 0.5 and confidence[8] == pytest.approx(0.575)


def test_ece_against_a_loop_over_bins_on_random_predictions():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2.5, (3000, 5))
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = rng.integers(0, 5, 3000)
  labels[:1500] = probabilities[:1500].argmax(1)  # some right, some wrong
  # Confidences exactly on bin edges (k/15) go to the lower bin.
  probabilities[0] = [0.4, 0.2, 0.2, 0.1, 0.1]  # 6/15
  assert calibration.expected_calibration_error(
      labels, probabilities) == pytest.approx(
          _ece_by_loop(labels, probabilities), rel=1e-12)
  assert calibration.expected_calibration_error(
      labels, probabilities, num_bins=4) == pytest.approx(
          _ece_by_loop(labels, probabilities, 4), rel=1e-12)


def test_brier_score_against_numpy():
  rng = np.random.default_rng(1)
  for num_classes in (2, 4):
    probabilities = rng.dirichlet(np.ones(num_classes), 200)
    labels = rng.integers(0, num_classes, 200)
    onehot = np.eye(num_classes)[labels]
    expected = np.mean(np.sum((probabilities - onehot) ** 2, axis=1))
    assert calibration.brier_score(labels, probabilities) == pytest.approx(
        expected, rel=1e-12)
  # A class never among the labels still counts (its column is all zeros).
  probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
  assert calibration.brier_score(np.array([0, 1]), probabilities) == (
      pytest.approx(((0.5 ** 2 + 0.3 ** 2 + 0.2 ** 2)
                     + (0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2)) / 2))


def test_non_finite_or_empty_probabilities_have_no_ece_or_brier():
  probabilities = np.array([[np.nan, 0.5], [0.5, 0.5]])
  assert calibration.expected_calibration_error([0, 1], probabilities) is None
  assert calibration.brier_score([0, 1], probabilities) is None
  assert calibration.expected_calibration_error([], np.zeros((0, 2))) is None
  with pytest.raises(ValueError, match='not all finite'):
    calibration.fit_temperature([0, 1], np.log(probabilities))


@pytest.mark.parametrize('true_temperature', [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
  """Labels drawn from softmax(z); the model reports z * T: the fit
  undoes it."""
  rng = np.random.default_rng(2)
  z = rng.normal(0, 2.0, (20000, 4))
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  labels = (rng.uniform(size=(20000, 1)) > np.cumsum(p, 1)).sum(1)
  reported = z * true_temperature
  temperature = calibration.fit_temperature(labels, reported)
  assert temperature == pytest.approx(true_temperature, rel=0.05)
  # The same from log-probabilities (a logsumexp shift per row).
  log_p = reported - np.log(np.exp(reported).sum(1, keepdims=True))
  assert calibration.fit_temperature(labels, log_p) == pytest.approx(
      temperature, rel=1e-4)
  calibrated = calibration.apply_temperature(log_p, temperature)
  np.testing.assert_allclose(calibrated, p, atol=0.05)
  np.testing.assert_array_equal(calibrated.argmax(1), reported.argmax(1))
  # Calibrated, the error is small; before, it is not.
  assert calibration.expected_calibration_error(labels, calibrated) < 0.02
  assert calibration.expected_calibration_error(
      labels, calibration.apply_temperature(log_p, 1.0)) > 0.05


def test_fitted_temperature_minimises_the_nll_over_a_grid():
  rng = np.random.default_rng(3)
  logits = rng.normal(0, 3.0, (500, 3))
  labels = rng.integers(0, 3, 500)
  labels[:300] = logits[:300].argmax(1)

  def nll(t):
    scaled = logits / t
    scaled -= scaled.max(1, keepdims=True)
    log_p = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    return -np.mean(log_p[np.arange(500), labels])

  grid = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
  best = grid[np.argmin([nll(t) for t in grid])]
  assert calibration.fit_temperature(labels, logits) == pytest.approx(
      best, rel=2e-3)


def _predictions(labels, logits):
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return evaluation.Predictions(
      labels=labels, probabilities=np.exp(log_p).astype(np.float32),
      loss=0.0, metadata={'index': np.arange(len(labels))},
      log_probabilities=log_p.astype(np.float32))


def test_report_keys_with_and_without_a_validation_split():
  from danil_jax.configs import default  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 4, 300)
  logits = rng.normal(0, 3, (300, 4))
  test, val = _predictions(labels[:200], logits[:200]), _predictions(
      labels[200:], logits[200:])
  names = ['a', 'b', 'c', 'd']
  eval_config = default.get_config().eval

  plain = evaluation.report(evaluation.calibrate(test, None), names,
                            eval_config)
  assert plain['ece'] == pytest.approx(_ece_by_loop(test.labels,
                                                    test.probabilities))
  assert 'brier' in plain and plain['tta'] == 'none'
  for key in ('ece_calibrated', 'temperature', 'brier_calibrated'):
    assert key not in plain
  assert 'no validation split' in plain['calibration']

  calibrated = evaluation.calibrate(test, val, 'validation')
  report = evaluation.report(calibrated, names, eval_config)
  temperature = calibration.fit_temperature(val.labels, logits[200:])
  assert report['temperature'] == pytest.approx(temperature, rel=1e-4)
  reference = np.exp(logits[:200] / temperature)
  reference /= reference.sum(1, keepdims=True)
  np.testing.assert_allclose(calibrated.calibrated_probabilities, reference,
                             atol=1e-5)
  assert report['ece_calibrated'] == pytest.approx(
      _ece_by_loop(test.labels, reference), abs=1e-5)
  assert report['macro_f1'] == plain['macro_f1']
  assert "'validation' (100 images)" in report['calibration']


def test_predict_calibrated_fits_on_the_validation_predictions():
  rng = np.random.default_rng(5)
  logits = {'test': rng.normal(0, 3, (50, 3)), 'val': rng.normal(0, 3, (80, 3))}
  labels = {k: rng.integers(0, 3, len(v)) for k, v in logits.items()}
  asked = []

  def predict(split):
    asked.append(split)
    return _predictions(labels[split], logits[split])

  out = evaluation.predict_calibrated(predict, 'test', 'val')
  assert asked == ['test', 'val']
  assert out.temperature == pytest.approx(
      calibration.fit_temperature(labels['val'], logits['val']), rel=1e-4)
  asked.clear()
  out = evaluation.predict_calibrated(predict, 'val', 'val')
  assert asked == ['val'] and out.calibration.endswith(
      '(the evaluated split itself)')
  asked.clear()
  out = evaluation.predict_calibrated(predict, 'test', '')
  assert asked == ['test'] and out.temperature is None
  assert out.calibrated_probabilities is None
