"""Where one compiled training step spends its time, per XLA thunk.

  python benchmarks/step_profile.py --model=resnet50 --size=224 --batch=8
  python benchmarks/step_profile.py --method=danil --json=/tmp/thunks.json

Runs the step once to warm up, once under `jax.profiler.trace`, reads the
trace back with `jax.profiler.ProfileData` and sums the duration of every
thunk XLA ran, over the runtime's worker threads. It prints the sums by
category (convs and dots, which XLA:CPU hands to YNNPACK fusions; copies and
transposes; elementwise fusions; reductions), by instruction name, and the
largest thunks. The sums are thread time, not wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
from jax.profiler import ProfileData

from benchmarks import step_cost
from danil_jax.method import registry
from danil_jax.trainer import train_step

# Category of a thunk by its HLO instruction name, first match wins.
CATEGORIES = (
    ('convs and dots (YNNPACK fusions)', r'^(ynn|xnn)_fusion'),
    ('convs (XLA)', r'^(conv_general_dilated|convolution)'),
    ('dots (XLA)', r'^dot'),
    ('thread pool wait', r'^SlinkyThreadPool'),
    ('kernel flips', r'reverse'),
    ('pooling', r'reduce-window|select-and-scatter|select_and_scatter'),
    ('copies and transposes', r'^(copy|transpose|bitcast)'),
    ('reductions (BN statistics, sums)', r'reduce'),
    ('elementwise fusions', r'fusion'),
)


def category(name: str) -> str:
  for label, pattern in CATEGORIES:
    if re.search(pattern, name, re.IGNORECASE):
      return label
  return 'other'


def thunk_times(profile_path: str) -> collections.Counter:
  """ns per thunk name, summed over XLA's worker threads."""
  times = collections.Counter()
  for plane in ProfileData.from_file(profile_path).planes:
    for line in plane.lines:
      if not line.name.startswith('tf_XLA'):
        continue
      for event in line.events:
        if not event.name.startswith('ThunkExecutor'):
          times[event.name] += event.duration_ns
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--method', default='base', choices=registry.names())
  parser.add_argument('--json', default=None, help='write thunk times here')
  args = parser.parse_args(argv)
  state, batch, _ = step_cost.setup_jax(args.model, args.size, args.batch, 7,
                                        jnp.float32)
  options = (dict(lam=step_cost.LAM, eps=step_cost.EPS,
                 reduction='per_image') if args.method == 'danil' else {})
  step = jax.jit(train_step.step_for(args.method, **options)).lower(
      state, batch).compile()
  jax.block_until_ready(step(state, batch))
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      jax.block_until_ready(step(state, batch))
    path = sorted(glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True))[-1]
    times = thunk_times(path)
  if not times:
    sys.exit('no XLA thunk events in the trace (this backend names its '
             "threads other than 'tf_XLA*'?)")
  by_category, by_name = collections.Counter(), collections.Counter()
  for name, ns in times.items():
    by_category[category(name)] += ns
    by_name[re.sub(r'\.\d+$', '', name)] += ns
  total = sum(times.values())
  print(f'{args.model} {args.size}px b{args.batch}, {args.method} step, '
        f'{jax.default_backend()}: {total / 1e6:.0f} ms of thunk time')
  for label, ns in by_category.most_common():
    print(f'  {label:36s} {ns / 1e6:8.1f} ms {100 * ns / total:5.1f}%')
  print('by instruction name:')
  for name, ns in by_name.most_common(12):
    print(f'  {name:36s} {ns / 1e6:8.1f} ms')
  print('largest thunks:')
  for name, ns in times.most_common(8):
    print(f'  {name:36s} {ns / 1e6:8.1f} ms')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(args=vars(args), thunks_ns=dict(times)), f, indent=1)


if __name__ == '__main__':
  main()
