"""The mechanism figure: paired differences against lam over the control's
band."""

import numpy as np
import pytest

from danil_jax.experiments import comparison
from danil_jax.experiments import mechanism


def _summaries(with_maps=True):
  """Base, the control and DANIL at two lams over three seeds; DANIL's map
  distance grows with lam, the control's stays near Base's."""
  rng = np.random.default_rng(0)

  def run(f1, log_distance, share=None):
    out = dict(macro_f1=f1, accuracy=f1)
    if share is not None:
      out['distraction_grad_share'] = share
    if with_maps:
      out.update(log10_map_distance=log_distance,
                 log10_map_distance_near_miss=log_distance + 0.5)
    return out

  base = {s: run(0.9 + 0.01 * s, -2.0 + 0.1 * s) for s in range(3)}
  control = {s: run(r['macro_f1'] + rng.normal(0, 0.005),
                    r.get('log10_map_distance', 0.0) + rng.normal(0, 0.01))
             for s, r in base.items()}
  summaries = []
  for text, lam, shift in (('1e-5', 1e-5, 0.0), ('1e-2', 1e-2, 1.0)):
    danil = {s: run(r['macro_f1'] + rng.normal(0, 0.005),
                    r.get('log10_map_distance', 0.0) + shift
                    + rng.normal(0, 0.01), share=lam * 10 * (1 + s))
             for s, r in base.items()}
    summaries.append(((('danil.lam', text, lam),), comparison.summarize(
        dict(base=base, control=control, danil=danil))))
  return summaries, [('danil.lam', [('1e-5', 1e-5), ('1e-2', 1e-2)])]


def test_panels_are_f1_and_the_scored_map_distances():
  summaries, _ = _summaries()
  assert mechanism.present(summaries) == [
      'macro_f1', 'log10_map_distance', 'log10_map_distance_near_miss',
      'distraction_grad_share']
  assert mechanism.present(_summaries(with_maps=False)[0]) == [
      'macro_f1', 'distraction_grad_share']


def test_a_point_is_the_paired_interval_or_the_shares_range():
  summaries, _ = _summaries()
  danil = summaries[1][1]['danil']
  stat = danil['log10_map_distance']['minus_base']
  assert mechanism._cell(danil, 'log10_map_distance', 'minus_base') == (
      stat['mean'], *stat['ci95'])
  assert mechanism._cell(danil, 'distraction_grad_share', 'minus_base') == (
      pytest.approx(0.2), 0.1, pytest.approx(0.3))  # lam 1e-2, seeds 0-2
  assert mechanism._cell(summaries[1][1]['base'], 'log10_map_distance',
                         'minus_base') is None  # the reference itself


def test_control_band_is_the_controls_paired_interval():
  summaries, _ = _summaries()
  stat = mechanism._control_stat(summaries, 'log10_map_distance',
                                 'minus_base')
  assert stat == summaries[0][1]['control']['log10_map_distance'][
      'minus_base']
  assert stat['ci95'][0] < 0.05 and stat['ci95'][1] > -0.05
  assert mechanism._control_stat(summaries, 'log10_map_distance_misclassified',
                                 'minus_base') is None


def test_plot_writes_a_png(tmp_path):
  summaries, sweep = _summaries()
  path = mechanism.plot(summaries, sweep, str(tmp_path / 'mechanism.png'))
  assert open(path, 'rb').read(4) == b'\x89PNG'
  # Large lam moved the maps by a factor of 10, beyond the control's band.
  high = summaries[1][1]['danil']['log10_map_distance']['minus_base']
  assert high['ci95'][0] > 0.9
