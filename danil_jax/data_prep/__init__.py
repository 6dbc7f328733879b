"""TFDS builders for danil-jax, used without TensorFlow.

Every builder yields examples with at least
  'image': tfds.features.Image(shape=(None, None, 3))  (uint8 RGB)
  'label': tfds.features.ClassLabel
and writes array_record files read through `tfds.data_source` / grain.
`open_dataset(config.dataset)` is what the trainer and the commands call:
it serves both the builders below and a user's own folder or CSV
(`name='folder'`, danil_jax/data_prep/own).

May import: TFDS, grain's array_record, etils, numpy, PIL (pydicom for
DICOM); nothing else of danil_jax, so that a builder can be read alone.
"""

import importlib
import os

import tensorflow_datasets as tfds
from etils import epath

from danil_jax.data_prep import common
from danil_jax.data_prep.own import dataset as own_dataset

# name -> 'module:ClassName'. Imported lazily: a builder module registers a
# TFDS name on import and may pull in heavy dependencies.
BUILDERS = {
    'danil_demo': 'danil_jax.data_prep.demo.builder:DanilDemo',
    'ham10000': 'danil_jax.data_prep.ham10000.builder:Ham10000',
    'aptos2019': 'danil_jax.data_prep.aptos2019.builder:Aptos2019',
    'crc_msi': 'danil_jax.data_prep.crc_msi.builder:CrcMsi',
}


# config.dataset.name of a user's own folder or CSV (danil_jax/data_prep/own).
FOLDER = 'folder'


def builder_class(name: str):
  try:
    module_name, class_name = BUILDERS[name].split(':')
  except KeyError:
    raise ValueError(
        f'unknown dataset {name!r}; expected one of {sorted(BUILDERS)}'
    ) from None
  return getattr(importlib.import_module(module_name), class_name)


def get_builder(name: str, *, data_dir: str, config: str | None = None):
  """The builder of dataset `name` (and builder config) under `data_dir`.

  `data_dir` may be any path etils.epath handles (a shared disk, `gs://...`).
  """
  kwargs = dict(data_dir=os.fspath(epath.Path(data_dir).expanduser()),
                file_format='array_record')
  if config:
    kwargs['config'] = config
  return builder_class(name)(**kwargs)


def prepare(name: str, *, data_dir: str, manual_dir: str | None = None,
            config: str | None = None, build: bool = True):
  """Returns the builder of `name`, building the dataset first if absent.

  Real datasets read the archives a user placed in `manual_dir`; TFDS writes
  into a temporary directory and renames it when complete, so a crash leaves
  nothing that later reads as a finished dataset. With `build=False` (the
  hosts other than the one that built it) a missing dataset is a DataError.
  """
  builder = get_builder(name, data_dir=data_dir, config=config)
  if not builder.is_prepared() and not build:
    raise common.DataError(
        f'dataset {name!r} is not in data_dir {data_dir} as seen from this '
        f'host ({builder.data_dir} not found), though the host that builds it '
        'has finished: every host must see the same data_dir (a shared disk '
        'or a bucket).')
  if not builder.is_prepared():
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
    # Builders of manually downloaded data raise here, before TFDS creates
    # anything, with the list of archives to download and where to put them.
    check = getattr(builder, 'check_manual_dir', None)
    if check is not None:
      check(manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(
        file_format='array_record', download_config=download_config)
  return builder


def open_dataset(dataset, *, build: bool = True):
  """The builder of `dataset` (a config.dataset), built first if needed.

  `build=False` on the hosts that wait for process 0 to build it.
  """
  if dataset.name == FOLDER:
    return own_dataset.prepare(dataset, build=build)
  return prepare(dataset.name, data_dir=dataset.data_dir,
                 manual_dir=dataset.manual_dir or None,
                 config=dataset.builder_config or None, build=build)


def dataset_builder(dataset):
  """The builder of `dataset` (a config.dataset) for its metadata, without
  building, scanning or reading its images."""
  if dataset.name == FOLDER:
    return own_dataset.builder(dataset)
  return get_builder(dataset.name, data_dir=dataset.data_dir,
                     config=dataset.builder_config or None)
