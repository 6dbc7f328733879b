"""Builds a dataset from its manually downloaded archives (no TensorFlow).

  python -m danil_jax.data_prep.build ham10000 --manual_dir=~/danil_data/ham10000 \
      --data_dir=~/tensorflow_datasets [--config=random] [--overwrite]

The `tfds build` CLI needs TensorFlow; this does the same for our builders,
writing array_record files that `tfds.data_source` and grain read. TFDS shows
a progress bar per split. Bad input stops the build with a message naming the
file and what was expected, and leaves no dataset that reads as complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import tensorflow_datasets as tfds

from danil_jax import data_prep
from danil_jax.data_prep import common


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m danil_jax.data_prep.build', description=__doc__.split('\n')[0])
  parser.add_argument('name', choices=sorted(data_prep.BUILDERS),
                      help='dataset to build')
  parser.add_argument('--manual_dir', default=None,
                      help='folder with the downloaded archives (default: '
                      '~/danil_data/<name>)')
  parser.add_argument('--data_dir', default='~/tensorflow_datasets',
                      help='where the built dataset goes '
                      '(default: %(default)s)')
  parser.add_argument('--config', default=None,
                      help="builder config, e.g. 'random' for ham10000 "
                      '(default: the builder\'s default)')
  parser.add_argument('--overwrite', action='store_true',
                      help='rebuild even if the dataset is already built')
  return parser.parse_args(argv)


def build(name: str, *, data_dir: str, manual_dir: str | None = None,
          config: str | None = None, overwrite: bool = False):
  """Builds `name` (unless built and not `overwrite`); returns the builder."""
  builder = data_prep.get_builder(name, data_dir=data_dir, config=config)
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  if builder.is_prepared() and not overwrite:
    print(f'{name}: already built in {builder.data_dir} (--overwrite to '
          'rebuild)')
    return builder
  check = getattr(builder, 'check_manual_dir', None)
  if check is not None:
    check(manual_dir)
  if builder.is_prepared():
    # TFDS cannot regenerate over a dataset whose info it has loaded, so the
    # old version goes first (only once the new archives are known present).
    shutil.rmtree(builder.data_dir)
    builder = data_prep.get_builder(name, data_dir=data_dir, config=config)
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  manual_dir = args.manual_dir
  if manual_dir is None and args.name != 'danil_demo':
    manual_dir = os.path.join('~', 'danil_data', args.name)
  tfds.enable_progress_bar()
  start = time.time()
  try:
    builder = build(args.name, data_dir=args.data_dir, manual_dir=manual_dir,
                    config=args.config, overwrite=args.overwrite)
  except (common.ManualFilesMissing, common.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  config_name = builder.builder_config.name if builder.builder_config else ''
  elapsed = time.time() - start
  print(f'{builder.name}/{config_name} in {builder.data_dir} '
        f'({elapsed:.0f} s):')
  for split, info in sorted(builder.info.splits.items()):
    print(f'  {split}: {info.num_examples} examples')
  return 0


if __name__ == '__main__':
  sys.exit(main())
