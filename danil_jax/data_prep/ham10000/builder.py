"""HAM10000 (Tschandl et al. 2018): 10,015 dermoscopic images, 7 classes.

Read from the files as distributed by Harvard Dataverse (two image zips and
the metadata table) or by Kaggle (unzipped folders and a CSV).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import tensorflow_datasets as tfds

from danil_jax.data_prep import base
from danil_jax.data_prep import common

CLASSES = ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']
COLUMNS = ['lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex',
           'localization']

MANUAL_DOWNLOAD_INSTRUCTIONS = """
HAM10000 cannot be downloaded automatically. Download, from Harvard Dataverse
(https://doi.org/10.7910/DVN/DBW86T; accept the licence):
  HAM10000_images_part1.zip
  HAM10000_images_part2.zip
  HAM10000_metadata.tab   (Dataverse's name; HAM10000_metadata.csv also works)
and put them, as they are, directly in the manual directory
(configs/ham10000.py uses ~/danil_data/ham10000; set
--config.dataset.manual_dir or the builder's --manual_dir to change it).
The Kaggle copy works too once unzipped there
(https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000):
HAM10000_metadata.csv and the folders HAM10000_images_part_1/ and
HAM10000_images_part_2/ (either capitalisation).
"""

_METADATA_NAMES = ['ham10000_metadata.tab', 'ham10000_metadata.csv',
                   'ham10000_metadata', 'ham10000_metadata.txt']
_IMAGE_ZIPS = ['ham10000_images_part1.zip', 'ham10000_images_part_1.zip',
               'ham10000_images_part2.zip', 'ham10000_images_part_2.zip']
_IMAGE_DIRS = ['ham10000_images_part1', 'ham10000_images_part_1',
               'ham10000_images_part2', 'ham10000_images_part_2',
               'ham10000_images']
_IMAGE_RE = re.compile(r'(^|/)ISIC_\d+\.jpe?g$', re.IGNORECASE)


@dataclasses.dataclass
class _Layout:
  metadata: str
  zips: list[str]
  dirs: list[str]


class Ham10000(base.ManualBuilder):
  """HAM10000 skin lesion classification (dermoscopy, 7 classes)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      base.SplitConfig(
          name='lesion',
          description='70/30 train/test split by lesion_id (no lesion in '
          'both), stratified by dx; validation: 10% of the training lesions.'),
      base.SplitConfig(
          name='random', grouped=False,
          description="The paper's plain random 70/30 split of the images, "
          'stratified by dx; validation: 10% of the training images. Images '
          'of one lesion can fall on both sides.'),
  ]
  DEFAULT_CONFIG_NAME = 'lesion'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'image_id': tfds.features.Text(),
            'lesion_id': tfds.features.Text(),
            # histo, follow_up, consensus or confocal.
            'dx_type': tfds.features.Text(),
            # -1 where the metadata gives no age.
            'age': tfds.features.Scalar(dtype=np.float32),
            'sex': tfds.features.Text(),
            'localization': tfds.features.Text(),
            # Source collection (newer metadata versions only, else '').
            'dataset': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://doi.org/10.7910/DVN/DBW86T',
        citation="""@article{tschandl2018ham10000,
  title={The {HAM10000} dataset, a large collection of multi-source
         dermatoscopic images of common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}""",
    )

  def _locate(self, manual_dir: str) -> _Layout:
    metadata = common.find_entries(manual_dir, _METADATA_NAMES)
    zips = common.find_entries(manual_dir, _IMAGE_ZIPS)
    dirs = common.find_entries(manual_dir, _IMAGE_DIRS)
    if not metadata or not (zips or dirs):
      what = ' or '.join(
          (['HAM10000_metadata.tab/.csv'] if not metadata else []) +
          (['HAM10000_images_part1.zip/part2.zip'] if not (zips or dirs)
           else []))
      raise common.missing_files_error(manual_dir, what,
                                       MANUAL_DOWNLOAD_INSTRUCTIONS)
    return _Layout(metadata[0], zips, dirs)

  def _index(self, layout: _Layout) -> common.FileIndex:
    index = common.FileIndex()
    accept = lambda path: bool(_IMAGE_RE.search(path))
    for path in layout.dirs:
      index.add_dir(path, accept)
    for path in layout.zips:
      index.add_zip(path, accept)
    return index

  def _read_records(self, layout: _Layout, index: common.FileIndex):
    source = layout.metadata
    with open(source, 'rb') as f:
      rows = common.read_table(f.read(), source=source, required=COLUMNS)
    base.check_labels(rows, 'dx', CLASSES, source=source)
    seen = set()
    for row in rows:
      if row['image_id'] in seen:
        raise common.DataError(
            f'{source}, line {row[common.LINE]}: image_id '
            f'{row["image_id"]} appears twice; expected one row per image')
      seen.add(row['image_id'])
      if not row['lesion_id']:
        raise common.DataError(
            f'{source}, line {row[common.LINE]}: empty lesion_id')
    image_of = {}
    for row in rows:
      # Metadata names images without extension; archives use .jpg (.jpeg
      # is accepted for re-packed copies).
      candidates = [row['image_id'] + ext for ext in ('.jpg', '.jpeg', '.JPG')]
      image_of[row['image_id']] = next(
          (c for c in candidates if c in index), candidates[0])
    base.check_images_present(list(image_of.values()), index, source=source)
    records = [{
        'key': row['image_id'],
        'image': image_of[row['image_id']],
        'group': row['lesion_id'],
        'features': {
            'label': row['dx'],
            'image_id': row['image_id'],
            'lesion_id': row['lesion_id'],
            'dx_type': row['dx_type'],
            'age': _age(row['age'], source, row[common.LINE]),
            'sex': row['sex'],
            'localization': row['localization'],
            'dataset': row.get('dataset', ''),
        },
    } for row in rows]
    return records, None


def _age(value: str, source: str, line: int) -> float:
  # Dataverse's .tab writes missing ages as NA, Kaggle's CSV leaves them empty.
  if value.strip().lower() in ('', 'na', 'nan', 'null', 'none'):
    return -1.0
  try:
    age = float(value)
  except ValueError:
    raise common.DataError(f'{source}, line {line}: age {value!r} is not a '
                           'number') from None
  return -1.0 if math.isnan(age) else age
