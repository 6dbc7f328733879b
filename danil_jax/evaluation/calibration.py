"""Whether the probabilities mean what they say: ECE, Brier, temperature.

Definitions (labels y_i, probabilities p_i over K classes, N images):

- Expected calibration error, top-label, 15 equal-width bins (Guo et al.,
  "On Calibration of Modern Neural Networks", ICML 2017): the confidence
  c_i = max_k p_ik, correct_i = [argmax_k p_ik == y_i]; bin m (m = 1..15)
  holds the images with (m-1)/15 < c_i <= m/15;
  ECE = sum_m |B_m| / N * |mean_{B_m} correct - mean_{B_m} c|.
- Brier score, multi-class (Brier 1950): the mean over images of
  sum_k (p_ik - [y_i == k])^2, in [0, 2] (not halved, also for two
  classes; scikit-learn's `brier_score_loss(scale_by_half=False)`).
- Temperature scaling (Guo et al. 2017): one scalar T > 0, the calibrated
  probabilities softmax(log p_i / T) (for plain logits z_i this is
  softmax(z_i / T): the shift by logsumexp cancels), T minimising the
  negative log-likelihood on a held-out split. The NLL is convex in 1/T,
  hence unimodal in log T, where scipy's bounded Brent method
  (`minimize_scalar`) searches it. T > 1 softens over-confident
  probabilities; the argmax, and so every accuracy-type metric, is
  unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy import special
from sklearn import metrics as skm

NUM_BINS = 15
# log T searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 1/100 to 100.
LOG_T_BOUND = float(np.log(100.0))


def reliability_bins(labels, probabilities, num_bins: int = NUM_BINS):
  """Per equal-width confidence bin: (count, accuracy, mean confidence);
  accuracy and confidence are NaN in an empty bin."""
  labels, probabilities = np.asarray(labels), np.asarray(probabilities)
  confidence = probabilities.max(-1).astype(np.float64)
  correct = (probabilities.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # right=True: bin m holds edges[m-1] < c <= edges[m]; c = 0 goes to bin 1.
  index = np.digitize(confidence, edges[1:-1], right=True)
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = np.bincount(index, correct, num_bins) / count
    mean_confidence = np.bincount(index, confidence, num_bins) / count
  return count, accuracy, mean_confidence


def expected_calibration_error(labels, probabilities,
                               num_bins: int = NUM_BINS) -> float | None:
  """Top-label ECE over `num_bins` equal-width bins (module docstring);
  None for no examples or non-finite probabilities."""
  probabilities = np.asarray(probabilities)
  if not len(probabilities) or not np.all(np.isfinite(probabilities)):
    return None
  count, accuracy, confidence = reliability_bins(labels, probabilities,
                                                 num_bins)
  used = count > 0
  return float(np.sum(count[used] * np.abs(accuracy[used] - confidence[used]))
               / np.sum(count))


def brier_score(labels, probabilities) -> float | None:
  """Multi-class Brier score (module docstring); None for no examples or
  non-finite probabilities."""
  probabilities = np.asarray(probabilities, np.float64)
  if not len(probabilities) or not np.all(np.isfinite(probabilities)):
    return None
  # float32 softmax sums are 1 within float32 rounding, not within the
  # float64 tolerance scikit-learn checks (and warns about).
  probabilities = probabilities / probabilities.sum(-1, keepdims=True)
  return float(skm.brier_score_loss(
      labels, probabilities, labels=np.arange(probabilities.shape[-1]),
      scale_by_half=False))


def _nll(log_t: float, labels, log_probabilities) -> float:
  scaled = log_probabilities * np.exp(-log_t)
  return float(np.mean(special.logsumexp(scaled, axis=-1)
                       - scaled[np.arange(len(labels)), labels]))


def fit_temperature(labels, log_probabilities) -> float:
  """The T minimising the mean NLL of softmax(log_probabilities / T).

  `log_probabilities` [N, K] may be logits or log-probabilities (the same
  T fits both). Raises ValueError if they are empty or not finite.
  """
  labels = np.asarray(labels)
  log_probabilities = np.asarray(log_probabilities, np.float64)
  if not len(labels):
    raise ValueError('no examples to fit a temperature on')
  if not np.all(np.isfinite(log_probabilities)):
    raise ValueError('the log-probabilities to fit a temperature on are not '
                     'all finite (a diverged model?)')
  result = optimize.minimize_scalar(
      _nll, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method='bounded',
      args=(labels, log_probabilities), options=dict(xatol=1e-6))
  if not result.success:
    raise ValueError(f'temperature fit did not converge: {result.message}')
  return float(np.exp(result.x))


def apply_temperature(log_probabilities, temperature: float) -> np.ndarray:
  """float32 softmax(log_probabilities / temperature) [N, K]."""
  return special.softmax(np.asarray(log_probabilities, np.float64)
                         / temperature, axis=-1).astype(np.float32)
