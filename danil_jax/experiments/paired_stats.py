"""What a comparison over seeds can show: paired differences, their 95%
confidence interval and the smallest difference the seeds can detect.

Two methods trained on the same seeds (the same initialisation and batch
order) are compared through their per-seed differences d_1..d_n: the mean,
the sample sd s, the two-sided t interval and p-value (scipy.stats.ttest_1samp
on d, i.e. the paired t-test), and the minimum detectable effect: the smallest
|delta| that a paired two-sided t-test at level ALPHA finds with probability
POWER, given s and n. The power comes from the noncentral t distribution
(scipy.stats.nct): T = mean / (s / sqrt(n)) has n - 1 degrees of freedom and
noncentrality delta * sqrt(n) / s. A difference well below the detectable one
is what the seeds cannot tell from the spread of training; an interval that
contains 0 shows no difference, whichever way its mean leans.

`seeds_needed` turns a per-seed sd into the number of seeds that brings the
detectable effect down to a target, paired (the sd of the differences) or
unpaired (two independent groups of n runs with a common sd).
"""

import math
import warnings

import numpy as np
from scipy import optimize
from scipy import stats

ALPHA = 0.05
POWER = 0.8
LEVEL = 1 - ALPHA  # of the confidence interval
CONTAINS_ZERO = 'interval contains 0: no difference shown'
ABOVE = 'interval above 0: higher'
BELOW = 'interval below 0: lower'
ONE_SEED = 'one seed: no interval'


def _check(sd: float, n: int) -> None:
  if not (isinstance(sd, (int, float)) and sd >= 0 and math.isfinite(sd)):
    raise ValueError(f'sd must be a finite number >= 0, got {sd!r}')
  if int(n) != n or n < 2:
    raise ValueError(f'need at least 2 seeds for a t-test, got n={n!r}')


def _df_and_scale(n: int, paired: bool) -> tuple[int, float]:
  """Degrees of freedom and the standard error of the difference per unit sd:
  paired, one sample of n differences; unpaired, two groups of n runs."""
  if paired:
    return n - 1, 1 / math.sqrt(n)
  return 2 * n - 2, math.sqrt(2 / n)


def power(delta: float, sd: float, n: int, *, paired: bool = True,
          alpha: float = ALPHA) -> float:
  """Probability that a two-sided t-test at `alpha` rejects 'no difference'
  when the true mean difference is `delta` and the sd is `sd`."""
  _check(sd, n)
  df, scale = _df_and_scale(n, paired)
  critical = stats.t.ppf(1 - alpha / 2, df)
  if sd == 0:
    return 1.0 if delta else alpha
  nc = abs(delta) / (sd * scale)
  # The far tail as the upper tail at -nc: scipy's nct.cdf can return NaN
  # deep in that tail, where the probability is below 1e-15 anyway.
  far = stats.nct.sf(critical, df, -nc)
  return float(stats.nct.sf(critical, df, nc)
               + (0.0 if math.isnan(far) else far))


def detectable(sd: float, n: int, *, paired: bool = True,
               alpha: float = ALPHA, target_power: float = POWER) -> float:
  """The minimum detectable effect: the smallest |delta| > 0 with
  `power(delta, sd, n) >= target_power` (0 when sd is 0)."""
  _check(sd, n)
  if sd == 0:
    return 0.0
  _, scale = _df_and_scale(n, paired)
  upper = 4 * sd * scale + sd  # power rises with delta: grow until past it
  while power(upper, sd, n, paired=paired, alpha=alpha) < target_power:
    upper *= 2
  return float(optimize.brentq(
      lambda delta: power(delta, sd, n, paired=paired, alpha=alpha)
      - target_power, 0.0, upper, xtol=1e-12 * sd, rtol=1e-12))


def seeds_needed(sd: float, target: float, *, paired: bool = True,
                 alpha: float = ALPHA, target_power: float = POWER,
                 max_seeds: int = 1_000_000) -> int:
  """The fewest seeds n >= 2 whose detectable effect is <= `target` (paired:
  n pairs with a paired sd `sd`; unpaired: n runs per method)."""
  if not target > 0:
    raise ValueError(f'target must be > 0, got {target!r}')

  def enough(n):
    return detectable(sd, n, paired=paired, alpha=alpha,
                      target_power=target_power) <= target

  high = 2
  while not enough(high):  # the detectable effect falls as n grows
    if high >= max_seeds:
      raise ValueError(f'more than {max_seeds} seeds for a detectable '
                       f'{target} at sd {sd}')
    high = min(2 * high, max_seeds)
  low = high // 2  # not enough (or below 2)
  while high - low > 1:
    middle = (low + high) // 2
    if middle >= 2 and enough(middle):
      high = middle
    else:
      low = middle
  return high


def reading(stat: dict) -> str:
  """The interval in words."""
  if stat.get('ci95') is None:
    return ONE_SEED
  low, high = stat['ci95']
  if low <= 0 <= high:
    return CONTAINS_ZERO
  return ABOVE if low > 0 else BELOW


def describe(differences) -> dict:
  """Per-seed differences -> n, mean, sd (ddof=1), the 95% interval
  `ci95` = [low, high], the paired t-test's `p`, the minimum `detectable`
  effect and the `reading` in words. Values undefined for one seed (or a p
  for identical differences) are None, so the dict dumps as strict JSON."""
  d = np.asarray(differences, np.float64)
  if d.ndim != 1 or not d.size:
    raise ValueError(f'expected a list of differences, got {differences!r}')
  stat = dict(n=int(d.size), mean=float(d.mean()), sd=None, ci95=None,
              p=None, detectable=None)
  if d.size > 1:
    # Identical differences have no spread (np.std leaves rounding there).
    sd = float(d.std(ddof=1)) if np.ptp(d) else 0.0
    stat.update(sd=sd, detectable=detectable(sd, d.size))
    if sd == 0:  # every seed moved by the same amount: no spread to test
      stat['ci95'] = [stat['mean'], stat['mean']]
    else:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        test = stats.ttest_1samp(d, 0.0)
      interval = test.confidence_interval(LEVEL)
      stat.update(ci95=[float(interval.low), float(interval.high)],
                  p=float(test.pvalue))
  stat['reading'] = reading(stat)
  return stat


def paired(values: dict, reference: dict) -> dict | None:
  """`describe` of {seed: value} minus the reference's on the seeds both
  have; None without a common seed."""
  common = sorted(s for s in values if s in reference)
  if not common:
    return None
  return describe([values[s] - reference[s] for s in common])


# Column headers of `cells`, shared by every table of paired differences.
HEADERS = ('pairs', 'difference', '95% CI', 'p', 'detectable', 'reading')
LEGEND = ('difference: mean {pm} sample sd of the per-seed differences; '
          '95% CI: t interval of their mean; p: paired two-sided t-test; '
          'detectable: the smallest true difference that test finds with '
          f'{POWER:.0%} power at the {ALPHA:.0%} level, from the sd and the '
          'number of pairs (smaller ones are likely missed).')


def cells(stat: dict, pm: str = '±') -> list[str]:
  """`describe`'s dict as the texts of HEADERS ('-' where undefined)."""
  difference = f"{stat['mean']:+.4f}"
  if stat['sd'] is not None:
    difference += f" {pm} {stat['sd']:.4f}"
  interval = ('-' if stat['ci95'] is None else
              f"[{stat['ci95'][0]:+.4f}, {stat['ci95'][1]:+.4f}]")
  p = ('-' if stat['p'] is None else
       '< 0.001' if stat['p'] < 0.001 else f"{stat['p']:.3f}")
  mde = '-' if stat['detectable'] is None else f"{stat['detectable']:.4f}"
  return [str(stat['n']), difference, interval, p, mde, stat['reading']]
