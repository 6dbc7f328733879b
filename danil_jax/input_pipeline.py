"""grain input pipelines over TFDS array_record data sources.

Training: an endless, per-epoch reshuffled stream, sharded by JAX process so
every host loads only its part of each global batch; the iterator state is
checkpointed so a resumed run sees the batches an uninterrupted one would.
Evaluation: the whole split in order, the last global batch padded and
masked, so no example is dropped or counted twice.
"""

import dataclasses
import math

import grain
import jax
import numpy as np

from danil_jax import augment


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  augment: bool = True


class _TrainTransform(grain.transforms.RandomMap):

  def __init__(self, pre: Preprocessing):
    self.pre = pre

  def random_map(self, record, rng: np.random.Generator):
    pre = self.pre
    if pre.augment:
      image = augment.train_transform(record['image'], rng, size=pre.size,
                                      mean=pre.mean, std=pre.std)
    else:
      image = augment.eval_transform(record['image'], size=pre.size,
                                     mean=pre.mean, std=pre.std)
    return {'image': image, 'label': np.int32(record['label'])}


def train_loader(source, *, global_batch_size: int, pre: Preprocessing,
                 seed: int, num_workers: int = 0) -> grain.DataLoader:
  """An endless loader yielding this process's share of each global batch."""
  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not divisible '
                     f'by the number of processes {process_count}')
  if len(source) < global_batch_size:
    raise ValueError(f'the training split has {len(source)} examples, fewer '
                     f'than one global batch of {global_batch_size}')
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_TrainTransform(pre),
                  grain.transforms.Batch(global_batch_size // process_count,
                                         drop_remainder=True)],
      worker_count=num_workers)


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
                 num_workers: int = 0):
  """Yields this process's slice of every global batch of the whole split.

  Global batch b covers indices [b * G, (b + 1) * G); process p takes the
  p-th contiguous block of it. Indices past the end are padding (mask False).
  """
  process_count, process_index = jax.process_count(), jax.process_index()
  per_process = global_batch_size // process_count
  num_batches = max(1, math.ceil(len(source) / global_batch_size))
  indices = (np.arange(num_batches)[:, None] * global_batch_size
             + process_index * per_process
             + np.arange(per_process)[None, :]).reshape(-1)
  dataset = (grain.MapDataset.source(indices)
             .map(_EvalRecord(source, pre))
             .batch(per_process, drop_remainder=False))
  if num_workers > 0:
    return iter(dataset.to_iter_dataset().mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers)))
  return iter(dataset)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return max(1, math.ceil(num_examples / global_batch_size))
