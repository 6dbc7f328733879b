"""CRC-MSI (Kather et al. 2019): colorectal cancer H&E tiles, MSIMUT vs MSS.

Read from the four zips of zenodo record 2530835 as distributed (or their
unzipped folders); the official train/test split is kept (93,408 training
tiles), and the patient id from each tile's TCGA barcode is stored so that
the validation split can hold out whole patients.
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorflow_datasets as tfds

from danil_jax.data_prep import base
from danil_jax.data_prep import common

CLASSES = ['MSIMUT', 'MSS']
SPLITS = {'train': 'TRAIN', 'test': 'TEST'}

MANUAL_DOWNLOAD_INSTRUCTIONS = """
CRC-MSI cannot be downloaded automatically. Download, from zenodo record
2530835 (https://zenodo.org/records/2530835):
  CRC_DX_TRAIN_MSIMUT.zip
  CRC_DX_TRAIN_MSS.zip
  CRC_DX_TEST_MSIMUT.zip
  CRC_DX_TEST_MSS.zip
and put them, as they are, directly in the manual directory (configs/crc_msi.py
uses ~/danil_data/crc_msi; set --config.dataset.manual_dir or the builder's
--manual_dir to change it). Unzipped folders work too: each zip holds a
folder MSIMUT/ or MSS/, so unzip each into a folder named after the zip
(CRC_DX_TRAIN_MSIMUT/MSIMUT/...), or the train zips into CRC_DX_TRAIN/ and the
test zips into CRC_DX_TEST/ (CRC_DX_TRAIN/MSIMUT/...).
"""

# blk-<tile id>-TCGA-<TSS>-<participant>-<sample...>.png; the first 12
# characters of the TCGA barcode identify the patient.
_TILE_RE = re.compile(
    r'^blk-(?P<tile>[A-Za-z0-9]+)-(?P<slide>(?P<patient>TCGA-[A-Za-z0-9]{2}-'
    r'[A-Za-z0-9]{4})[-A-Za-z0-9.]*)\.png$')


@dataclasses.dataclass
class _Layout:
  # (split, class) -> zip file or folder with that class's tiles.
  sources: dict[tuple[str, str], str]


def _is_png(path: str) -> bool:
  return path.lower().endswith('.png')


class CrcMsi(base.ManualBuilder):
  """CRC-MSI: microsatellite instability from H&E tiles (2 classes)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      base.SplitConfig(
          name='default',
          description='The official train/test split; validation: 10% of '
          'the training patients (all their tiles), stratified by class.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'patient_id': tfds.features.Text(),  # TCGA-XX-XXXX
            'slide_id': tfds.features.Text(),  # the TCGA barcode in the name
            'filename': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://zenodo.org/records/2530835',
        citation="""@article{kather2019deep,
  title={Deep learning can predict microsatellite instability directly from
         histology in gastrointestinal cancer},
  author={Kather, Jakob Nikolas and Pearson, Alexander T and Halama, Niels
          and others},
  journal={Nature Medicine}, volume={25}, number={7}, pages={1054--1056},
  year={2019}}""",
    )

  def _locate(self, manual_dir: str) -> _Layout:
    sources, missing = {}, []
    for split, tag in SPLITS.items():
      for cls in CLASSES:
        name = f'crc_dx_{tag.lower()}_{cls.lower()}'
        found = (common.find_entries(manual_dir, [name + '.zip']) +
                 [p for p in common.find_entries(manual_dir, [name])
                  if os.path.isdir(p)])
        for folder in (f'crc_dx_{tag.lower()}', split):
          for parent in common.find_entries(manual_dir, [folder]):
            found += [p for p in common.find_entries(parent, [cls.lower()])
                      if os.path.isdir(p)]
        if found:
          sources[split, cls] = found[0]
        else:
          missing.append(f'CRC_DX_{tag}_{cls}.zip')
    if missing:
      raise common.missing_files_error(manual_dir, ', '.join(missing),
                                       MANUAL_DOWNLOAD_INSTRUCTIONS)
    return _Layout(sources)

  def _index(self, layout: _Layout) -> common.FileIndex:
    # Records need to know which archive each tile came from, so indexing
    # happens in _read_records.
    return common.FileIndex()

  def _read_records(self, layout: _Layout, index: common.FileIndex):
    records = {split: [] for split in SPLITS}
    label_of = {}
    for (split, cls), path in sorted(layout.sources.items()):
      if path.lower().endswith('.zip'):
        names = index.add_zip(path, _is_png)
      else:
        names = index.add_dir(path, _is_png)
      if not names:
        raise common.DataError(f'{path}: contains no PNG tiles; expected '
                               f'{cls} tiles named blk-<id>-TCGA-...png')
      for name in names:
        if label_of.setdefault(name, (split, cls)) != (split, cls):
          raise common.DataError(
              f'{path}: tile {name} is also in the {label_of[name][0]} '
              f'{label_of[name][1]} archive; expected each tile once')
        match = _TILE_RE.match(name)
        if not match:
          raise common.DataError(
              f'{path}: unexpected file {name}; expected tiles named '
              'blk-<id>-TCGA-XX-XXXX-<sample>.png')
        records[split].append({
            'key': name[:-4],
            'image': name,
            'group': match['patient'],
            'features': {'label': cls, 'patient_id': match['patient'],
                         'slide_id': match['slide'], 'filename': name},
        })
    return records['train'], records['test']
