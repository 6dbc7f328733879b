"""APTOS 2019 Blindness Detection: 3,662 graded fundus photographs, 5 grades.

Read from the Kaggle competition download (the whole-competition zip, or
`train.csv` with `train_images/` or `train_images.zip`). Kaggle's test set
has no public labels, so, as in the paper, the labelled set is split 70/30
(stratified by grade) into train and test.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import tensorflow_datasets as tfds

from danil_jax.data_prep import base
from danil_jax.data_prep import common

CLASSES = ['no_dr', 'mild', 'moderate', 'severe', 'proliferative_dr']
COLUMNS = ['id_code', 'diagnosis']
_COMPETITION_ZIP = 'aptos2019-blindness-detection.zip'

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
APTOS 2019 cannot be downloaded automatically. Accept the competition rules at
https://www.kaggle.com/competitions/aptos2019-blindness-detection and download
its data ("Download All", or `kaggle competitions download -c
aptos2019-blindness-detection`), which gives
  {_COMPETITION_ZIP}
Put it, as it is, directly in the manual directory (configs/aptos2019.py uses
~/danil_data/aptos2019; set --config.dataset.manual_dir or the builder's
--manual_dir to change it). Unzipped works too: train.csv and the folder
train_images/ (or train_images.zip) in the manual directory. Only the
labelled training images are used.
"""


@dataclasses.dataclass
class _Layout:
  csv: tuple[str, str | None]  # (file, None) or (zip, member)
  dirs: list[str]
  zips: list[tuple[str, str]]  # (zip, prefix of its image members)


def _under(folder: str):
  """Accepts PNGs; with `folder`, only those inside a folder of that name."""
  def accept(path: str) -> bool:
    return (path.lower().endswith('.png') and
            (not folder or f'/{folder}' in '/' + path))
  return accept


class Aptos2019(base.ManualBuilder):
  """APTOS 2019 diabetic retinopathy grading (fundus, 5 grades)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      # The originals are up to 4288x2848 PNGs; decoding one takes ~0.2 s,
      # too slow for a training input pipeline, so the default stores them
      # with the shorter side at 512 px as JPEG (the photos were JPEG-
      # compressed originally, q95 adds no visible loss).
      base.SplitConfig(
          name='short512', grouped=False, max_short_side=512,
          image_format='JPEG',
          description='Images resized to a 512 px shorter side, JPEG q95; '
          '70/30 train/test stratified by grade; validation: 10% of train.'),
      base.SplitConfig(
          name='original', grouped=False,
          description='Images as distributed (PNG); same splits as short512.'),
  ]
  DEFAULT_CONFIG_NAME = 'short512'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'id_code': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=('https://www.kaggle.com/competitions/'
                  'aptos2019-blindness-detection'),
        citation="""@misc{aptos2019,
  title={{APTOS} 2019 Blindness Detection},
  author={{Asia Pacific Tele-Ophthalmology Society}},
  howpublished={Kaggle},
  url={https://www.kaggle.com/competitions/aptos2019-blindness-detection},
  year={2019}}""",
    )

  def _locate(self, manual_dir: str) -> _Layout:
    # Unzipping the competition zip by double-click adds a folder level.
    roots = [manual_dir] + [
        p for p in common.find_entries(manual_dir, [_COMPETITION_ZIP[:-4]])
        if os.path.isdir(p)]
    csv, dirs, zips = None, [], []
    for root in roots:
      for path in common.find_entries(root, ['train.csv']):
        csv = csv or (path, None)
      dirs += [p for p in common.find_entries(root, ['train_images'])
               if os.path.isdir(p)]
      zips += [(p, '') for p in common.find_entries(root, ['train_images.zip'])]
      for path in common.find_entries(root, [_COMPETITION_ZIP]):
        zips.append((path, 'train_images/'))
        if csv is None:
          csv = (path, _zip_member(path, 'train.csv'))
    if csv is None or csv[1] == '' or not (dirs or zips):
      what = ' or '.join((['train.csv'] if csv is None or csv[1] == '' else [])
                         + (['train_images/'] if not (dirs or zips) else []))
      raise common.missing_files_error(
          manual_dir, f'{_COMPETITION_ZIP} ({what})',
          MANUAL_DOWNLOAD_INSTRUCTIONS)
    return _Layout(csv, dirs, zips)

  def _index(self, layout: _Layout) -> common.FileIndex:
    index = common.FileIndex()
    for path in layout.dirs:
      index.add_dir(path, _under(''))
    for path, prefix in layout.zips:
      index.add_zip(path, _under(prefix))
    return index

  def _read_records(self, layout: _Layout, index: common.FileIndex):
    path, member = layout.csv
    source = path if member is None else f'{path}:{member}'
    if member is None:
      with open(path, 'rb') as f:
        data = f.read()
    else:
      with zipfile.ZipFile(path) as archive:
        data = archive.read(member)
    rows = common.read_table(data, source=source, required=COLUMNS)
    base.check_labels(rows, 'diagnosis', [str(i) for i in range(5)],
                      source=source)
    ids = [row['id_code'] for row in rows]
    if len(set(ids)) != len(ids):
      dup = next(i for i in ids if ids.count(i) > 1)
      raise common.DataError(f'{source}: id_code {dup} appears twice; '
                             'expected one row per image')
    base.check_images_present([i + '.png' for i in ids], index, source=source)
    records = [{
        'key': row['id_code'],
        'image': row['id_code'] + '.png',
        'group': None,
        'features': {'label': CLASSES[int(row['diagnosis'])],
                     'id_code': row['id_code']},
    } for row in rows]
    return records, None


def _zip_member(path: str, name: str) -> str:
  """The member of zip `path` whose base name is `name` ('' if none)."""
  try:
    with zipfile.ZipFile(path) as archive:
      members = [m for m in archive.namelist()
                 if m.rsplit('/', 1)[-1] == name]
  except (zipfile.BadZipFile, OSError) as e:
    raise common.DataError(f'{path}: not a readable zip archive ({e}); '
                           'download it again') from e
  return min(members, key=len) if members else ''
