"""Build speed and memory of a folder data set (danil_jax/data_prep/own).

  python -m benchmarks.own_data_build --root=/tmp/bench_folder \
      --data_dir=/tmp/bench_data [--images=20000] [--size=512] [--workers=0]

Writes `--images` smooth, textured 8-bit RGB PNGs of `--size` px in 4 class
folders, patients in the file names (grouped by `group_regex`), as copies of
256 distinct ones kept in a hidden folder the build skips, unless `--root`
already holds them (`--make_only` stops there). Then builds the data set
once in this process and prints images/s and the peak resident memory of
the build (this process; the largest worker and all workers, sampled), and
the time a later run takes to find the build up to date (a scan and a
fingerprint). Only the build is timed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import shutil
import threading
import time

import ml_collections
import numpy as np
from PIL import Image
import psutil

CLASSES = ('a', 'b', 'c', 'd')


def _write(args: tuple[str, int, int]) -> None:
  path, size, seed = args
  rng = np.random.default_rng(seed)
  # Smooth shapes plus mild noise: compresses like a scan, not like noise.
  y, x = np.mgrid[0:size, 0:size] / size
  base = np.stack([np.sin(x * rng.uniform(2, 9) + c) * np.cos(
      y * rng.uniform(2, 9) + c) for c in range(3)], axis=-1)
  image = (base + 1) * 110 + rng.integers(-6, 7, (size, size, 3))
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      path, compress_level=1)


def make_folder(root: str, count: int, size: int, unique: int = 256) -> None:
  """`count` PNGs, copies of `unique` different ones (writing 20,000
  distinct ones would take longer than the build it feeds; the build
  decodes every file all the same)."""
  patterns = os.path.join(root, '.patterns')
  os.makedirs(patterns, exist_ok=True)
  jobs = [(os.path.join(patterns, f'{i}.png'), size, i)
          for i in range(min(unique, count))]
  with concurrent.futures.ProcessPoolExecutor() as pool:
    list(pool.map(_write, [j for j in jobs if not os.path.exists(j[0])]))
  for i in range(count):
    folder = os.path.join(root, CLASSES[i % len(CLASSES)])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'P{i // 8:05d}_{i:06d}.png')
    if not os.path.exists(path):
      shutil.copyfile(jobs[i % len(jobs)][0], path)


def _sample_workers(peaks: dict, done: threading.Event) -> None:
  """Peak resident memory of the worker processes, sampled every 0.2 s."""
  me = psutil.Process()
  while not done.wait(0.2):
    sizes = []
    for child in me.children(recursive=True):
      try:
        sizes.append(child.memory_info().rss)
      except psutil.Error:
        pass  # it ended between the listing and the look
    if sizes:
      peaks['largest_worker'] = max(peaks['largest_worker'], max(sizes))
      peaks['all_workers'] = max(peaks['all_workers'], sum(sizes))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--images', type=int, default=20000)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--workers', type=int, default=0)
  parser.add_argument('--make_only', action='store_true',
                      help='write the images and stop (then the build runs '
                      'in a process whose children are its workers alone)')
  args = parser.parse_args()
  start = time.time()
  make_folder(args.root, args.images, args.size)
  print(f'images ready in {time.time() - start:.0f} s')
  if args.make_only:
    return

  from danil_jax import data_prep  # pylint: disable=g-import-not-at-top
  from danil_jax.configs import folder  # pylint: disable=g-import-not-at-top
  config = folder.get_config()
  config.dataset.manual_dir = args.root
  config.dataset.data_dir = args.data_dir
  config.dataset.own.group_regex = r'(P\d+)_'
  config.dataset.own.workers = args.workers
  config = ml_collections.FrozenConfigDict(config)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  peaks = {'largest_worker': 0, 'all_workers': 0}
  done = threading.Event()
  sampler = threading.Thread(target=_sample_workers, args=(peaks, done))
  sampler.start()
  start = time.time()
  builder = data_prep.open_dataset(config.dataset)
  elapsed = time.time() - start
  done.set()
  sampler.join()
  count = sum(s.num_examples for s in builder.info.splits.values())
  # Every later run only scans the folder and compares fingerprints.
  start = time.time()
  data_prep.open_dataset(config.dataset)
  reopen = time.time() - start
  result = dict(
      images=count, size=args.size, seconds=round(elapsed, 1),
      images_per_s=round(count / elapsed, 1), cpus=os.cpu_count(),
      load_average=os.getloadavg()[0], reopen_seconds=round(reopen, 2),
      workers=args.workers or min(8, os.cpu_count() or 1),
      peak_rss_mib_main=round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      rss_mib_main_before_build=round(rss_before / 1024),
      peak_rss_mib_largest_worker=round(peaks['largest_worker'] / 2**20),
      peak_rss_mib_all_workers=round(peaks['all_workers'] / 2**20))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
