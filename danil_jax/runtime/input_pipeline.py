"""grain input pipelines over TFDS array_record data sources.

Training: global batch `s` holds the examples at positions
[j * G, (j + 1) * G) of epoch e's permutation (e, j = divmod(s, steps per
epoch); the permutation drawn from (seed, e)), in that order, each augmented
with a generator seeded by (seed, s, position in the batch). The global batch
is thus a function of (seed, s) alone, the same on 1 host or N with any number
of devices; each host reads and decodes only its contiguous slice of it. The
input position follows from the step, so a resumed run, on any number of
hosts, sees the batches an uninterrupted one would, with no iterator state to
checkpoint.
Evaluation: the whole split in order, the last global batch padded and
masked, so no example is dropped or counted twice.
"""

import dataclasses
import functools
import math

from absl import flags
import grain
import numpy as np

from danil_jax.runtime import augment
from danil_jax.runtime import multihost


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  augment: bool = True


# Each element is a whole batch: a few in flight, not grain's default 500.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


@functools.lru_cache(maxsize=2)
def _epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, 0, epoch]).permutation(num_records)


def train_batch_indices(num_records: int, *, global_batch_size: int, seed: int,
                        step: int) -> np.ndarray:
  """Record indices of global batch `step`, in order.

  A function of (seed, step) alone: every epoch is a fresh permutation of the records cut into
  `num_records // global_batch_size` batches; the remainder is dropped.
  """
  steps_per_epoch = num_records // global_batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = _epoch_order(num_records, seed, epoch)
  return order[position * global_batch_size:
               (position + 1) * global_batch_size]


class _TrainBatch(grain.transforms.Map):
  """Global step -> this process's slice of that global batch, augmented."""

  def __init__(self, source, pre: Preprocessing, *, global_batch_size: int,
               seed: int, positions: slice):
    self.source = source
    self.pre = pre
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.positions = positions

  def map(self, step):
    pre = self.pre
    indices = train_batch_indices(
        len(self.source), global_batch_size=self.global_batch_size,
        seed=self.seed, step=int(step))
    images, labels = [], []
    for position in range(self.positions.start, self.positions.stop):
      record = self.source[int(indices[position])]
      if pre.augment:
        rng = np.random.default_rng([self.seed, 1, int(step), position])
        image = augment.train_transform(record['image'], rng, size=pre.size,
                                        mean=pre.mean, std=pre.std)
      else:
        image = augment.eval_transform(record['image'], size=pre.size,
                                       mean=pre.mean, std=pre.std)
      images.append(image)
      labels.append(record['label'])
    return {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}


def train_loader(source, *, global_batch_size: int, pre: Preprocessing,
                 seed: int, start_step: int = 0, num_workers: int = 0,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """Endless: this process's slice of global batches start_step, +1, ...

  `process_index` and `process_count` default to JAX's.
  """
  positions = multihost.host_slice(
      global_batch_size, process_index=process_index,
      process_count=process_count)
  if len(source) < global_batch_size:
    raise ValueError(f'the training split has {len(source)} examples, fewer '
                     f'than one global batch of {global_batch_size}')
  dataset = grain.MapDataset.range(start_step, 2**62).map(_TrainBatch(
      source, pre, global_batch_size=global_batch_size, seed=seed,
      positions=positions))
  return _iterate(dataset, num_workers)


def _iterate(dataset: grain.MapDataset, num_workers: int):
  """Iterates in order; `num_workers` > 0 processes decode batches."""
  dataset = dataset.to_iter_dataset(_READ_OPTIONS)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags, which only app.run (our
      # commands) parses; a library caller of the trainer has not.
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers))
  return dataset


class _EvalRecord(grain.transforms.Map):
  """Global index -> preprocessed example, or a masked-out pad example."""

  def __init__(self, source, pre: Preprocessing):
    self.source = source
    self.pre = pre

  def map(self, index):
    pre = self.pre
    if index < len(self.source):
      record = self.source[int(index)]
      image = augment.eval_transform(record['image'], size=pre.size,
                                     mean=pre.mean, std=pre.std)
      return {'image': image, 'label': np.int32(record['label']),
              'mask': np.bool_(True)}
    return {'image': np.zeros((pre.size, pre.size, 3), np.float32),
            'label': np.int32(0), 'mask': np.bool_(False)}


def eval_batches(source, *, global_batch_size: int, pre: Preprocessing,
                 num_workers: int = 0, process_index: int | None = None,
                 process_count: int | None = None):
  """Yields this process's slice of every global batch of the whole split.

  Global batch b covers indices [b * G, (b + 1) * G); process p takes the
  p-th contiguous block of it. Indices past the end are padding (mask False).
  `process_index` and `process_count` default to JAX's.
  """
  positions = multihost.host_slice(
      global_batch_size, process_index=process_index,
      process_count=process_count)
  per_process = positions.stop - positions.start
  num_batches = num_eval_batches(len(source), global_batch_size)
  indices = (np.arange(num_batches)[:, None] * global_batch_size
             + np.arange(positions.start, positions.stop)[None, :]
             ).reshape(-1)
  dataset = (grain.MapDataset.source(indices)
             .map(_EvalRecord(source, pre))
             .batch(per_process, drop_remainder=False))
  if num_workers > 0:
    return iter(_iterate(dataset, num_workers))
  return iter(dataset)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return max(1, math.ceil(num_examples / global_batch_size))
