"""Images/s of real training: input pipeline + step, per worker count.

  python benchmarks/train_throughput.py                        # demo + CRC-MSI
  python benchmarks/train_throughput.py --data=crc_msi --model=resnet50 \
      --batch=8 --steps=3 --workers=0,1,2 --train_workers=2

For each data source and grain worker count, after warm-up (compilation and
the first batches, so worker start-up is excluded):

  pipeline     images/s of `input_pipeline.train_loader` alone (decode +
               training augmentation + batching), as `train.py` builds it
  per core     (0 workers) the pipeline's images per CPU-second of the
               process: one busy core's rate, robust to a loaded machine
  step base    images/s of the compiled Base step on one fixed device batch
  step danil   the same for the DANIL step
  train base   images/s of the loop `train.py` runs: next batch from the
               loader, `multihost.global_batch`, the Base step
  train danil  the same with the DANIL step

Data sources: `demo` (the embedded procedural set, built into a temporary
directory, 32x32 as configs/demo.py) and `crc_msi` (dummy CRC-MSI-like
224x224 PNG tiles decoded with PIL, `benchmarks/input_pipeline.py`'s
synthetic source). The step donates its state, as in `train.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import input_pipeline as pipeline_bench
from danil_jax.runtime import input_pipeline
from danil_jax import models
from danil_jax.runtime import multihost
from danil_jax.trainer import train_step

LAM, EPS = 1e-5, 1e-4


class _LabelledSource:
  """A source whose labels are taken modulo the model's class count."""

  def __init__(self, source, num_classes):
    self._source, self._num_classes = source, num_classes

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = self._source[index]
    return dict(record, label=np.int64(record['label'] % self._num_classes))


def _demo_source(tmp):
  from danil_jax import data_prep  # pylint: disable=g-import-not-at-top
  builder = data_prep.prepare('danil_demo', data_dir=tmp)
  return builder.as_data_source('train'), 32, len(
      builder.info.features['label'].names)


def _sources(names, tmp):
  for name in names:
    if name == 'demo':
      source, size, classes = _demo_source(tmp)
      yield name, source, size, classes
    elif name == 'crc_msi':
      yield name, _LabelledSource(pipeline_bench.SyntheticSource('crc_msi'),
                                  2), 224, 2
    else:
      raise ValueError(f'--data: unknown source {name!r}; expected demo or '
                       'crc_msi')


def _rate(batches, batch_size, seconds):
  return batches * batch_size / seconds


def _time_loader(iterator, batches, warmup):
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return time.perf_counter() - start


class Trainer:
  """The model, its train state and the jitted Base and DANIL steps for one
  source, compiled once for every worker count."""

  def __init__(self, size, num_classes, *, model_name, dtype):
    info = models.info(model_name)
    self.pre = input_pipeline.Preprocessing(size=size, mean=info.mean,
                                            std=info.std)
    self.mesh = multihost.make_mesh()
    model = models.create(model_name, num_classes, dtype=jnp.dtype(dtype))
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, size, size, 3)), train=False)
    self.state = train_step.create_train_state(
        model, variables, optax.sgd(0.01, momentum=0.9),
        jax.random.PRNGKey(1))
    self.steps = {
        'base': jax.jit(train_step.step_for('base'), donate_argnums=0),
        'danil': jax.jit(train_step.step_for(
            'danil', lam=LAM, eps=EPS, reduction='per_image'),
                         donate_argnums=0)}


def measure(source, trainer, *, batch_size, steps_count, workers,
            pipeline_only=False, warmup=2):
  """{column: images/s} for one source and worker count."""
  out = {}

  def loader():
    return iter(input_pipeline.train_loader(
        source, global_batch_size=batch_size, pre=trainer.pre, seed=0,
        num_workers=workers))

  cpu_start = time.process_time()
  out['pipeline'] = _rate(steps_count, batch_size,
                          _time_loader(loader(), steps_count, warmup))
  if workers == 0:
    # Images per CPU-second of this process (warm-up included): the rate of
    # one fully used core, whatever share of the cores the process got.
    out['per core'] = _rate(steps_count + warmup, batch_size,
                            time.process_time() - cpu_start)
  if pipeline_only:
    return out
  mesh = trainer.mesh
  for method, step in trainer.steps.items():
    iterator = loader()
    fixed = multihost.global_batch(next(iterator), mesh)
    state = jax.tree.map(jnp.copy, trainer.state)
    for _ in range(warmup):  # compiles on first use
      state, metrics = step(state, fixed)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps_count):
      state, metrics = step(state, fixed)
    jax.block_until_ready(metrics)
    out[f'step {method}'] = _rate(steps_count, batch_size,
                                  time.perf_counter() - start)
    for _ in range(warmup):
      state, metrics = step(state, multihost.global_batch(next(iterator),
                                                          mesh))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps_count):
      state, metrics = step(state, multihost.global_batch(next(iterator),
                                                          mesh))
    jax.block_until_ready(metrics)
    out[f'train {method}'] = _rate(steps_count, batch_size,
                                   time.perf_counter() - start)
  return out


COLUMNS = ('pipeline', 'per core', 'step base', 'train base', 'step danil', 'train danil')


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--data', default='demo,crc_msi')
  parser.add_argument('--model', default='small_resnet')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--steps', type=int, default=10,
                      help='timed batches/steps per column, after warm-up')
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--train_workers', default='',
                      help='time the steps only at these worker counts '
                      '(default: all); the others get the pipeline column')
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, source, size, classes in _sources(args.data.split(','), tmp):
      trainer = Trainer(size, classes, model_name=args.model,
                        dtype=args.dtype)
      train_workers = ({int(w) for w in args.train_workers.split(',')}
                       if args.train_workers else None)
      for workers in (int(w) for w in args.workers.split(',')):
        rates = measure(source, trainer, batch_size=args.batch,
                        steps_count=args.steps, workers=workers,
                        pipeline_only=(train_workers is not None
                                       and workers not in train_workers))
        rows.append((f'{name} {size}px', workers, rates))
        print(f'{name} {size}px workers {workers}: ' + ', '.join(
            f'{k} {v:.1f}' for k, v in rates.items()), flush=True)
  print(f'\n{args.model} {args.dtype} batch {args.batch}, {args.steps} timed '
        f'steps; {jax.default_backend()}, {os.cpu_count()} CPUs; images/s')
  print(f'| data | workers | ' + ' | '.join(COLUMNS) + ' |')
  print('|---|---|' + '---|' * len(COLUMNS))
  for data, workers, rates in rows:
    print(f'| {data} | {workers} | ' + ' | '.join(
        f'{rates[c]:.1f}' if c in rates else '-' for c in COLUMNS) + ' |')


if __name__ == '__main__':
  main()
