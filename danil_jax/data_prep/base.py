"""Base class of the builders that read manually downloaded archives.

A subclass says where its files are (`_locate`), how to read its metadata
into records (`_read_records`) and which features to write (`_info`); this
class validates everything it can before a single example is written, makes
the train/validation/test splits and writes the images.

Split policy (all configurable through the builder config):
  * `test`: the official test set where one exists (CRC-MSI), otherwise
    `test_fraction` of the labelled images, stratified by label and, for
    grouped configs, by whole lesion/patient groups.
  * `validation`: `validation_fraction` of the remaining training images,
    carved the same way, for model selection; the test split is never used
    for it. `train+validation` is the paper's full training set.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from danil_jax.data_prep import common

# Images decoded ahead of the writer.
_CHUNK = 256


@dataclasses.dataclass(eq=False)
class SplitConfig(tfds.core.BuilderConfig):
  """How a builder splits its data and stores its images.

  Attributes:
    grouped: hold out whole groups (lesions, patients) rather than images.
    test_fraction: share of the labelled data held out as `test`; ignored
      when the dataset has an official test set.
    validation_fraction: share of the training data held out as
      `validation`; 0 writes no validation split.
    seed: seed of the splits (they are deterministic given it).
    max_short_side: shrink images whose shorter side is larger (0: never).
    image_format: format of re-encoded images ('PNG' or 'JPEG').
  """
  grouped: bool = True
  test_fraction: float = 0.3
  validation_fraction: float = 0.1
  seed: int = 0
  max_short_side: int = 0
  image_format: str = 'PNG'


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds a dataset from archives in `dl_manager.manual_dir`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  # --- To override. -------------------------------------------------------

  def _locate(self, manual_dir: str) -> Any:
    """Finds the files, or raises `common.ManualFilesMissing` saying which."""
    raise NotImplementedError

  def _index(self, layout: Any) -> common.FileIndex:
    """A `FileIndex` of every image of the dataset."""
    raise NotImplementedError

  def _read_records(self, layout: Any, index: common.FileIndex
                    ) -> tuple[list[dict], list[dict] | None]:
    """(labelled records, official test records or None).

    A record is a dict with 'key' (unique), 'image' (its name in `index`),
    'group' (lesion/patient id or None) and 'features' (everything written
    except the image, 'label' as a class name). Images missing from `index`
    and unknown labels must raise `common.DataError` here.
    """
    raise NotImplementedError

  # --- Shared logic. ------------------------------------------------------

  def default_manual_dir(self) -> str:
    return os.path.join(os.fspath(self.data_dir_root), 'downloads', 'manual')

  def check_manual_dir(self, manual_dir: str | None = None) -> None:
    """Raises `ManualFilesMissing` at once if the archives are not there."""
    self._locate(os.path.expanduser(manual_dir or self.default_manual_dir()))

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:
      # TFDS's message for a missing/empty dir; ours also lists the files.
      manual_dir = os.fspath(dl_manager._manual_dir)  # pylint: disable=W0212
    layout = self._locate(manual_dir)
    index = self._index(layout)
    records, test_records = self._read_records(layout, index)
    splits = self._make_splits(records, test_records)
    return {name: self._generate_examples(index, recs)
            for name, recs in splits.items()}

  def _make_splits(self, records: list[dict],
                   test_records: list[dict] | None) -> dict[str, list[dict]]:
    config = self.builder_config
    records = sorted(records, key=lambda r: r['key'])
    splits = {}
    if test_records is None:
      records, splits['test'] = self._hold_out(records, config.test_fraction,
                                               config.seed)
    else:
      splits['test'] = sorted(test_records, key=lambda r: r['key'])
    if config.validation_fraction > 0:
      records, splits['validation'] = self._hold_out(
          records, config.validation_fraction, config.seed + 1)
    splits['train'] = records
    for name, recs in splits.items():
      if not recs:
        raise common.DataError(
            f'{self.name}: the {name} split would be empty ({len(records)} '
            'training images in all); the manual directory holds too few '
            'images')
    return splits

  def _hold_out(self, records, fraction, seed):
    grouped = self.builder_config.grouped and records[0]['group'] is not None
    kept, held = common.stratified_split(
        [r['features']['label'] for r in records], fraction, seed=seed,
        groups=[r['group'] for r in records] if grouped else None)
    return [records[i] for i in kept], [records[i] for i in held]

  def _generate_examples(self, index: common.FileIndex,
                         records: list[dict]) -> Iterator[tuple[str, dict]]:
    config = self.builder_config

    def load(record):
      name = record['image']
      return common.check_image(
          index.read(name), source=index.location(name),
          max_short_side=config.max_short_side or None,
          reencode_format=config.image_format)

    # Decoding (to validate) and resizing dominate the build; PIL releases
    # the GIL for both, so threads scale with cores. Chunks bound memory.
    workers = min(16, os.cpu_count() or 1)
    try:
      with concurrent.futures.ThreadPoolExecutor(workers) as executor:
        for start in range(0, len(records), _CHUNK):
          chunk = records[start:start + _CHUNK]
          for record, image in zip(chunk, executor.map(load, chunk)):
            yield record['key'], {**record['features'], 'image': image}
    finally:
      index.close()  # the next split reopens what it needs


def check_labels(rows: list[dict], column: str, names: list[str], *,
                 source: str) -> None:
  """Raises `DataError` on the first value of `column` not in `names`."""
  for row in rows:
    if row[column] not in names:
      raise common.DataError(
          f'{source}, line {row[common.LINE]}: unknown {column} '
          f'{row[column]!r}; expected one of {", ".join(names)}')


def check_images_present(names: list[str], index: common.FileIndex, *,
                         source: str) -> None:
  """Raises `DataError` listing metadata images that no archive contains."""
  missing = [n for n in names if n not in index]
  if missing:
    shown = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
    raise common.DataError(
        f'{source}: {len(missing)} image(s) listed there are not in '
        f'{", ".join(index.sources) or "any image archive"}: {shown}. '
        'Expected every listed image to be present; download the missing '
        'archive(s) again.')
