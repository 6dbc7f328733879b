"""Paired differences over seeds: the 95% interval, the p-value, the minimum
detectable effect and the seeds it needs, each against a computation that
does not share the code's route (tables, closed forms, integration, Monte
Carlo)."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from danil_jax.experiments import paired_stats as ps

# Two-sided 97.5% quantiles of Student's t, from a printed table.
T_975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}


def test_interval_and_p_on_fixed_numbers():
  # Two pairs: t = 0.075 / (0.0354 / sqrt(2)) = 3 with 1 degree of freedom,
  # a Cauchy variable: p = 1 - 2 atan(3) / pi.
  stat = ps.describe([0.05, 0.10])
  assert stat['n'] == 2
  assert stat['mean'] == pytest.approx(0.075)
  assert stat['sd'] == pytest.approx(math.sqrt(2) * 0.025)
  half = T_975[1] * 0.025
  assert stat['ci95'] == pytest.approx([0.075 - half, 0.075 + half], abs=1e-5)
  assert stat['p'] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
  assert stat['reading'] == ps.CONTAINS_ZERO
  # Three pairs: 2 degrees of freedom, where P(|T| > t) = 1 - t / sqrt(2+t^2).
  stat = ps.describe([0.04, 0.05, 0.06])
  t = 0.05 / (0.01 / math.sqrt(3))
  assert stat['p'] == pytest.approx(1 - t / math.sqrt(2 + t * t))
  half = T_975[2] * 0.01 / math.sqrt(3)
  assert stat['ci95'] == pytest.approx([0.05 - half, 0.05 + half], abs=1e-5)
  assert stat['reading'] == ps.ABOVE
  # The demo's control against Base over 5 seeds (README): excludes nothing.
  base = np.array([0.858, 0.851, 0.710, 0.864, 0.855])
  control = np.array([0.782, 0.865, 0.658, 0.827, 0.835])
  stat = ps.paired(dict(enumerate(control)), dict(enumerate(base)))
  d = control - base
  half = T_975[4] * d.std(ddof=1) / math.sqrt(5)
  assert stat['ci95'] == pytest.approx([d.mean() - half, d.mean() + half],
                                       abs=1e-4)
  assert stat['p'] == pytest.approx(stats.ttest_rel(control, base).pvalue)
  assert stat['reading'] == ps.CONTAINS_ZERO
  assert ps.describe([-0.3, -0.2, -0.25])['reading'] == ps.BELOW


def test_one_seed_and_no_spread_give_json_safe_values():
  stat = ps.describe([0.1])
  assert (stat['sd'], stat['ci95'], stat['p'], stat['detectable']) == (
      None, None, None, None)
  assert stat['reading'] == ps.ONE_SEED
  same = ps.describe([0.1, 0.1, 0.1])
  assert same['ci95'] == pytest.approx([0.1, 0.1])
  assert same['detectable'] == 0.0 and same['p'] is None
  assert ps.paired({0: 1.0}, {1: 1.0}) is None
  assert ps.cells(stat) == ['1', '+0.1000', '-', '-', '-', ps.ONE_SEED]


# Seeds per method for a two-sided t-test at 5% with 80% power, as G*Power
# and Cohen's tables give them: effect size d = delta / sd.
@pytest.mark.parametrize('d,paired,n', [
    (0.5, True, 34), (0.8, True, 15), (0.2, True, 199),
    (0.5, False, 64), (0.8, False, 26), (0.2, False, 394)])
def test_seeds_needed_match_published_sample_sizes(d, paired, n):
  sd = 0.04
  assert ps.seeds_needed(sd, d * sd, paired=paired) == n
  assert ps.detectable(sd, n, paired=paired) <= d * sd
  assert ps.detectable(sd, n - 1, paired=paired) > d * sd


def _power_by_integration(delta, sd, n, paired=True, alpha=0.05):
  """P(|mean / se| > c) integrated over the chi-square of the sd estimate:
  the mean is normal, independent of the sd, so the power is
  E_V[Phi(-c sqrt(V/df) + nc) + Phi(-c sqrt(V/df) - nc)], V ~ chi2(df)."""
  df = n - 1 if paired else 2 * n - 2
  se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
  nc = delta / se
  c = stats.t.isf(alpha / 2, df)

  def integrand(v):
    scale = c * math.sqrt(v / df)
    return stats.chi2.pdf(v, df) * (stats.norm.cdf(nc - scale)
                                    + stats.norm.cdf(-nc - scale))
  return integrate.quad(integrand, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize('n,paired', [(2, True), (3, True), (5, True),
                                      (13, True), (5, False), (30, False)])
def test_detectable_has_80_percent_power_by_integration(n, paired):
  sd = 0.034
  mde = ps.detectable(sd, n, paired=paired)
  assert _power_by_integration(mde, sd, n, paired) == pytest.approx(0.8,
                                                                    abs=1e-6)
  for delta in (0.3 * mde, 1.5 * mde):
    assert ps.power(delta, sd, n, paired=paired) == pytest.approx(
        _power_by_integration(delta, sd, n, paired), abs=1e-6)


def test_detectable_has_80_percent_power_by_simulation():
  """Paired t-tests on simulated seeds at the detectable difference reject
  about 80% of the time (Monte Carlo standard error 0.002)."""
  n, sd = 5, 0.034
  mde = ps.detectable(sd, n)
  rng = np.random.default_rng(0)
  d = rng.normal(mde, sd, size=(40_000, n))
  rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
  assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_detectable_against_statsmodels():
  power = pytest.importorskip('statsmodels.stats.power')
  for n in (2, 5, 20):
    assert ps.detectable(0.05, n) == pytest.approx(
        0.05 * power.TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8),
        rel=1e-5)
    assert ps.detectable(0.05, n, paired=False) == pytest.approx(
        0.05 * power.TTestIndPower().solve_power(nobs1=n, alpha=0.05,
                                                 power=0.8), rel=1e-5)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='at least 2 seeds'):
    ps.detectable(0.1, 1)
  with pytest.raises(ValueError, match='sd must be'):
    ps.detectable(float('nan'), 5)
  with pytest.raises(ValueError, match='target must be'):
    ps.seeds_needed(0.1, 0.0)
  with pytest.raises(ValueError, match='expected a list'):
    ps.describe([])
