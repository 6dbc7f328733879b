"""Where a plain training step's time goes: every conv of a backbone, timed
alone in JAX (XLA) and PyTorch (the profile of the backward convs).

  python benchmarks/conv_profile.py --model=resnet50 --size=224 --batch=8

Records the shapes of every 2D conv the model's forward runs, then times, for
each distinct (input, kernel, stride, padding, groups) with its count:

  fwd        the conv
  dx         its input gradient (JAX: the stock lax rule and `ops`' rule)
  dw         its weight gradient (JAX: the stock rule and `ops`' rule)

each jitted alone (JAX) or called alone (PyTorch, `torch.nn.grad`), median
of `--reps` after a warm-up, and prints the totals per kind and the convs
whose weight gradient loses most to PyTorch. A plain step is one fwd + dx +
dw per conv plus everything else (BN, ReLU, pooling, optimiser); the totals
show which of the three makes XLA:CPU's backward slow.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from jax import lax
import jax.numpy as jnp
import numpy as np

from danil_jax import models
from danil_jax.method import ops

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_shapes(name: str, size: int, batch: int) -> collections.Counter:
  """Counter of (x shape, w shape, strides, pads, groups) of the forward."""
  seen = collections.Counter()
  original = ops.conv2d

  def recording(x, w, strides, pads, groups=1, precision=None):
    seen[(tuple(x.shape), tuple(w.shape), tuple(strides),
          tuple(tuple(p) for p in pads), groups)] += 1
    return original(x, w, strides, pads, groups, precision)

  model = models.create(name, 7)
  x = jnp.zeros((batch, size, size, 3))
  ops.conv2d = recording
  try:
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))
    seen.clear()  # init ran the forward at batch 1
    jax.eval_shape(lambda v: model.apply(v, x, train=True,
                                         mutable=['batch_stats'],
                                         rngs={'dropout': jax.random.PRNGKey(0)}),
                   variables)
  finally:
    ops.conv2d = original
  return seen


def _median_ms(fn, reps):
  fn()  # warm-up (and compile)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def time_jax(key, reps):
  x_shape, w_shape, strides, pads, groups = key
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  w = jnp.asarray(rng.standard_normal(w_shape, np.float32))

  def stock(x_, w_):
    return lax.conv_general_dilated(x_, w_, strides, pads,
                                    dimension_numbers=_NHWC,
                                    feature_group_count=groups)

  def mine(x_, w_):
    return ops.conv_general_dilated(x_, w_, strides, pads,
                                    dimension_numbers=_NHWC,
                                    feature_group_count=groups)

  y = stock(x, w)
  g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  fns = {
      'fwd': jax.jit(stock),
      'dx stock': jax.jit(lambda x_, w_, g_: jax.vjp(
          lambda a: stock(a, w_), x_)[1](g_)[0]),
      'dw stock': jax.jit(lambda x_, w_, g_: jax.vjp(
          lambda b: stock(x_, b), w_)[1](g_)[0]),
      # Through the custom rule as a step uses it (XLA drops the unused
      # half of its backward).
      'dx ops': jax.jit(lambda x_, w_, g_: jax.vjp(
          lambda a: mine(a, w_), x_)[1](g_)[0]),
      'dw ops': jax.jit(lambda x_, w_, g_: jax.vjp(
          lambda b: mine(x_, b), w_)[1](g_)[0]),
  }
  out = {}
  for k, f in fns.items():
    args = (x, w) if k == 'fwd' else (x, w, g)
    out[k] = _median_ms(lambda: jax.block_until_ready(f(*args)), reps)
  return out


def time_torch(key, reps):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  x_shape, w_shape, strides, pads, groups = key
  if any(lo != hi for lo, hi in pads):
    return {}  # torch pads symmetrically; not the same conv
  gen = torch.Generator().manual_seed(0)
  n, h, w_, c = x_shape
  kh, kw, cin, cout = w_shape
  x = torch.randn(n, c, h, w_, generator=gen)
  w = torch.randn(cout, cin, kh, kw, generator=gen)
  kwargs = dict(stride=strides, padding=tuple(lo for lo, _ in pads),
                groups=groups)
  y = F.conv2d(x, w, **kwargs)
  g = torch.randn(y.shape, generator=gen)
  with torch.no_grad():
    return {
        'fwd': _median_ms(lambda: F.conv2d(x, w, **kwargs), reps),
        'dx': _median_ms(lambda: torch.nn.grad.conv2d_input(
            x.shape, w, g, **kwargs), reps),
        'dw': _median_ms(lambda: torch.nn.grad.conv2d_weight(
            x, w.shape, g, **kwargs), reps),
    }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
  shapes = conv_shapes(args.model, args.size, args.batch)
  rows = []
  for i, (key, count) in enumerate(shapes.items()):
    row = dict(x=key[0], w=key[1], strides=key[2], pads=key[3],
               groups=key[4], count=count, jax=time_jax(key, args.reps))
    row['torch'] = {} if args.no_torch else time_torch(key, args.reps)
    rows.append(row)
    print(f'[{i + 1}/{len(shapes)}] x{count} {key[0]} w{key[1]} s{key[2]} '
          + ' '.join(f'{k} {v:.1f}' for k, v in row['jax'].items())
          + ' | torch ' + ' '.join(f'{k} {v:.1f}'
                                   for k, v in row['torch'].items()),
          flush=True)
  totals = collections.defaultdict(float)
  for row in rows:
    for k, v in row['jax'].items():
      totals['jax ' + k] += v * row['count']
    for k, v in row['torch'].items():
      totals['torch ' + k] += v * row['count']
  # Convs torch cannot express (asymmetric pads) count in JAX's totals only.
  skipped = sum(r['count'] for r in rows if not r['torch'])
  print(f"\n{args.model} {args.size}px b{args.batch}: "
        f"{sum(r['count'] for r in rows)} convs, {len(rows)} distinct"
        + (f'; {skipped} with asymmetric pads have no torch time'
           if skipped and not args.no_torch else ''))
  for k in sorted(totals):
    print(f'  {k:14s} {totals[k]:9.1f} ms')
  if not args.no_torch:
    print('\nweight gradients losing most to PyTorch (ms x count):')
    ranked = sorted((r for r in rows if r['torch']), key=lambda r: -(
        r['jax'].get('dw ops', r['jax']['dw stock']) - r['torch']['dw'])
                    * r['count'])
    for r in ranked[:6]:
      print(f"  x{r['count']} x{r['x']} w{r['w']} s{r['strides']}: jax "
            f"{r['jax'].get('dw ops', r['jax']['dw stock']):.1f} (stock "
            f"{r['jax']['dw stock']:.1f}) vs torch {r['torch']['dw']:.1f}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(args=vars(args), rows=rows, totals=totals), f, indent=1)


if __name__ == '__main__':
  main()
