"""A user's folder or CSV as a built data set: checked, built once, never stale.

`prepare(config.dataset, build=...)` scans the source (cheap: a stat per
file), and builds the data set if it is not built yet, or if the source
changed since the build (rebuilt, saying what changed, or refused with
`own.on_change='refuse'`). `builder(config.dataset)` only reads a data set
built before, for its class names (predict).

The options come from `config.dataset` (configs/default.py documents each
key); the ones that change what is built name the builder config, the
others (workers, on_change) do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

from etils import epath
import tensorflow_datasets as tfds

from danil_jax.data_prep import common
from danil_jax.data_prep.own import builder as builder_lib
from danil_jax.data_prep.own import images
from danil_jax.data_prep.own import sources

ON_CHANGE = ('rebuild', 'refuse')


class BadOption(common.DataError):
  """A config.dataset value the folder data set cannot use."""


class StaleData(common.DataError):
  """The source changed since the data set was built."""


@dataclasses.dataclass(frozen=True)
class Options:
  """config.dataset's keys of a folder data set, checked."""
  source: str  # the folder, or the table with config.dataset.csv
  is_table: bool
  build: dict  # what changes what is built (JSON-able)
  workers: int
  on_change: str
  data_dir: str

  @classmethod
  def from_config(cls, dataset) -> 'Options':
    own = dataset.own
    if dataset.csv:
      source, is_table = os.path.abspath(os.path.expanduser(dataset.csv)), True
    elif dataset.manual_dir:
      source = os.path.abspath(os.path.expanduser(dataset.manual_dir))
      is_table = False
    else:
      raise BadOption('config.dataset.manual_dir (a folder DIR/<class>/...) '
                      'or config.dataset.csv (a table of path, label) is '
                      'needed for dataset.name=folder')
    for key in ('test_fraction', 'validation_fraction'):
      if not 0 <= own[key] < 1:
        raise BadOption(f'config.dataset.own.{key} must be in [0, 1), got '
                        f'{own[key]!r}')
    if own.test_fraction + own.validation_fraction >= 1:
      raise BadOption('config.dataset.own.test_fraction + validation_fraction '
                      'must be below 1 (the rest is train), got '
                      f'{own.test_fraction} + {own.validation_fraction}')
    if own.rescale not in images.RESCALES:
      raise BadOption(f'config.dataset.own.rescale must be one of '
                      f'{list(images.RESCALES)}, got {own.rescale!r}')
    if own.on_change not in ON_CHANGE:
      raise BadOption(f'config.dataset.own.on_change must be one of '
                      f'{list(ON_CHANGE)}, got {own.on_change!r}')
    window = tuple(own.dicom_window)
    if window and (len(window) != 2 or not window[1] >= 1):
      raise BadOption('config.dataset.own.dicom_window must be () (the '
                      'file\'s window) or (center, width >= 1), got '
                      f'{window!r}')
    if own.group_regex:
      try:
        re.compile(own.group_regex)
      except re.error as e:
        raise BadOption(f'config.dataset.own.group_regex {own.group_regex!r}'
                        f' is not a regular expression ({e})') from None
    class_names = [str(c) for c in dataset.class_names]
    if len(set(class_names)) != len(class_names):
      raise BadOption('config.dataset.class_names lists a class twice: '
                      f'{class_names}')
    build = dict(
        source=source, class_names=class_names,
        columns={k: own[f'{k}_column'] for k in ('path', 'label', 'group',
                                                 'split')},
        group_regex=own.group_regex, test_fraction=own.test_fraction,
        validation_fraction=own.validation_fraction, seed=own.seed,
        allow_shared_groups=own.allow_shared_groups, skip_bad=own.skip_bad,
        rescale=own.rescale, dicom_window=list(window),
        max_short_side=own.max_short_side)
    workers = own.workers or min(8, os.cpu_count() or 1)
    return cls(source, is_table, build, workers, own.on_change,
               os.fspath(epath.Path(dataset.data_dir).expanduser()))

  def config_name(self) -> str:
    """'<source name>-<hash of the build options>'."""
    digest = hashlib.sha256(json.dumps(self.build, sort_keys=True).encode())
    stem = re.sub(r'[^A-Za-z0-9_]+', '_', os.path.basename(self.source))
    return f'{stem.strip("_")[:40] or "data"}-{digest.hexdigest()[:12]}'

  def scan(self) -> sources.Source:
    if self.is_table:
      return sources.scan_table(
          self.source, columns=self.build['columns'],
          class_names=self.build['class_names'],
          group_regex=self.build['group_regex'])
    return sources.scan_folder(self.source, self.build['class_names'],
                               self.build['group_regex'])


def absolute_paths(dataset) -> None:
  """Makes `dataset`'s manual_dir and csv absolute, in place: the run pins
  them so, and its commands find the data from any directory."""
  for key in ('manual_dir', 'csv'):
    if dataset[key]:
      dataset[key] = os.path.abspath(os.path.expanduser(dataset[key]))


def _builder(options: Options, source: sources.Source | None):
  config = builder_lib.FolderConfig(
      name=options.config_name(),
      description=f'{options.source} (danil_jax/data_prep/own)',
      options=json.dumps({**options.build, 'workers': options.workers}))
  return builder_lib.Folder(config=config, data_dir=options.data_dir,
                            file_format='array_record', source=source)


def builder(dataset) -> builder_lib.Folder:
  """The built data set of `dataset` (config.dataset), read only."""
  options = Options.from_config(dataset)
  found = _builder(options, None)
  if not found.is_prepared():
    raise common.DataError(
        f'{options.source} has not been built in {options.data_dir} '
        f'({found.data_dir} not found); train on it first, or build it with '
        'the same config.dataset keys')
  return found


def prepare(dataset, *, build: bool = True) -> builder_lib.Folder:
  """The built data set of `dataset` (config.dataset), built if needed.

  With `build=False` (the hosts that wait for process 0 to build) a data
  set that is missing, or older than the source, is an error.
  """
  options = Options.from_config(dataset)
  source = options.scan()
  found = _builder(options, source)
  if found.is_prepared():
    stored = builder_lib.read_manifest(found)
    if stored is not None and stored.get('fingerprint') == source.fingerprint():
      return found
    change = (sources.describe_change(stored, source.manifest()) if stored
              else f'no {builder_lib.MANIFEST} in {found.data_dir}')
    message = (f'{options.source} changed since its data set was built in '
               f'{found.data_dir}: {change}')
    if not build:
      raise StaleData(message + '; this host sees other files than the '
                      'host that built it (every host must see the same '
                      'files)')
    if options.on_change == 'refuse':
      raise StaleData(message + "; config.dataset.own.on_change='refuse'"
                      " ('rebuild' rebuilds it)")
    print(message + ': rebuilding')
    epath.Path(found.data_dir).rmtree()
    found = _builder(options, source)
  elif not build:
    raise common.DataError(
        f'{options.source}: not built in {options.data_dir} as seen from '
        f'this host ({found.data_dir} not found), though the host that '
        'builds it has finished: every host must see the same data_dir')
  print(f'building {options.source} ({len(source.records)} images, '
        f'{len(source.class_names)} classes) into {found.data_dir}')
  found.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig())
  print(f'wrote {epath.Path(found.data_dir) / builder_lib.SPLITS_CSV}')
  return found
