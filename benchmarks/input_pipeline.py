"""Input pipeline throughput: images/s for decode + training augmentation.

  python -m benchmarks.input_pipeline                       # synthetic images
  python -m benchmarks.input_pipeline --workers=0,2,4,8 --batches=50
  python -m benchmarks.input_pipeline --dataset=ham10000 \
      --data_dir=~/tensorflow_datasets                      # a built dataset

Runs grain's DataLoader (shuffled index sampler, per-example decode and
`danil_jax.runtime.augment.train_transform` to 224x224, batches of 32) with each
worker count and prints images/s. The synthetic source serves encoded images
shaped like the real datasets (HAM10000 600x450 JPEG, APTOS 'short512'
768x512 JPEG, CRC-MSI 224x224 PNG) and decodes them as the TFDS data source
does, with PIL. Worker start-up is excluded: the clock starts after the
first batches arrive.
"""

from __future__ import annotations

import argparse
import io
import os
import time

from absl import flags
import grain
import numpy as np
from PIL import Image

from danil_jax.runtime import augment

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHAPES = {'ham10000': ((600, 450), 'JPEG'),
          'aptos2019': ((768, 512), 'JPEG'),
          'crc_msi': ((224, 224), 'PNG')}


def _synthetic_image(rng: np.random.Generator, size, fmt) -> bytes:
  """A smooth image with texture: compresses like a photo, not like noise."""
  w, h = size
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  image = np.stack([
      128 + 60 * np.sin(x / rng.uniform(20, 60) + c) *
      np.cos(y / rng.uniform(20, 60) - c) for c in range(3)], axis=-1)
  image += rng.normal(0, 6, image.shape)
  out = io.BytesIO()
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return out.getvalue()


class SyntheticSource:
  """A grain random-access source of decoded images (picklable for workers)."""

  def __init__(self, kind: str, pool: int = 32, length: int = 100_000):
    size, fmt = SHAPES[kind]
    rng = np.random.default_rng(0)
    self._encoded = [_synthetic_image(rng, size, fmt) for _ in range(pool)]
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    data = self._encoded[index % len(self._encoded)]
    with Image.open(io.BytesIO(data)) as image:
      return {'image': np.asarray(image.convert('RGB')),
              'label': np.int64(index % 7)}


class Augment(grain.transforms.RandomMap):
  """The training transform (module level, so workers can unpickle it)."""

  def __init__(self, size: int):
    self.size = size

  def random_map(self, record, rng):
    return {'image': augment.train_transform(record['image'], rng,
                                             size=self.size, mean=MEAN,
                                             std=STD),
            'label': np.int32(record['label'])}


def measure(source, *, workers: int, batch_size: int, batches: int,
            size: int, warmup: int = 2) -> float:
  """Images/s of the loader with `workers` processes (0: in this process)."""
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(
          num_records=len(source), shuffle=True, num_epochs=None, seed=0,
          shard_options=grain.sharding.NoSharding()),
      operations=[Augment(size),
                  grain.transforms.Batch(batch_size, drop_remainder=True)],
      worker_count=workers)
  iterator = iter(loader)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  assert batch['image'].shape == (batch_size, size, size, 3)
  return batches * batch_size / elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kind', default='ham10000', choices=sorted(SHAPES),
                      help='synthetic image shape to mimic')
  parser.add_argument('--dataset', default='',
                      help='use the train split of this built dataset instead')
  parser.add_argument('--data_dir', default='~/tensorflow_datasets')
  parser.add_argument('--config', default=None, help='its builder config')
  parser.add_argument('--workers', default='0,1,2',
                      help='comma-separated worker counts')
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--size', type=int, default=224)
  args = parser.parse_args()
  # grain reads absl flags in its workers; nothing else here uses them.
  flags.FLAGS.mark_as_parsed()

  if args.dataset:
    from danil_jax import data_prep
    source = data_prep.get_builder(
        args.dataset, data_dir=args.data_dir,
        config=args.config).as_data_source('train')
    what = f'{args.dataset} train split ({len(source)} images)'
  else:
    source = SyntheticSource(args.kind)
    what = f'synthetic {args.kind}-like images {SHAPES[args.kind]}'
  print(f'{what}: decode + train_transform to {args.size}x{args.size}, '
        f'batch {args.batch_size}, {os.cpu_count()} CPUs')
  print(f'{"workers":>8}  {"images/s":>9}')
  for workers in (int(w) for w in args.workers.split(',')):
    rate = measure(source, workers=workers, batch_size=args.batch_size,
                   batches=args.batches, size=args.size)
    print(f'{workers:>8}  {rate:>9.1f}', flush=True)


if __name__ == '__main__':
  main()
