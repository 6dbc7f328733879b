"""APTOS 2019 builder: the Kaggle layouts, the splits, and bad input."""

import io
import os
import zipfile

import numpy as np
from PIL import Image
import pytest

from danil_jax.data_prep import common
from danil_jax.data_prep import testing

NAME = 'aptos2019'
ZIP = 'aptos2019-blindness-detection.zip'
SIZES = {'train': 19, 'validation': 2, 'test': 9}


def _zip_path():
  return os.path.join(testing.dummy_dir(NAME), ZIP)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('data'))
  return testing.read_splits(
      testing.build(NAME, testing.dummy_dir(NAME), data_dir),
      ('id_code', 'label', 'image'))


def test_split_sizes_and_labels(built):
  assert {k: len(v) for k, v in built.items()} == SIZES
  ids = {k: testing.values(v, 'id_code') for k, v in built.items()}
  assert not ids['train'] & ids['test']
  assert not ids['validation'] & (ids['train'] | ids['test'])
  # 30 images, 6 per grade: 70/30 stratified puts ~2 of each in test.
  assert testing.label_counts(built['test']) == {0: 1, 1: 2, 2: 2, 3: 2, 4: 2}
  with zipfile.ZipFile(_zip_path()) as archive:
    rows = archive.read('train.csv').decode().split()[1:]
  expected = dict(row.split(',') for row in rows)
  for row in sum(built.values(), []):
    assert int(expected[row['id_code']]) == row['label']
  # Kaggle's unlabelled test image is not used.
  assert '0005cfc8afb6' not in set().union(*ids.values())


def test_images_are_rgb_even_when_stored_as_palette_png(built):
  for row in sum(built.values(), []):
    assert row['image'].dtype == np.uint8
    assert row['image'].ndim == 3 and row['image'].shape[-1] == 3


@pytest.mark.parametrize('layout', ['unzipped', 'double_click', 'images_zip'])
def test_unzipped_layouts_give_the_same_splits(built, tmp_path, layout):
  manual = tmp_path / 'manual'
  with zipfile.ZipFile(_zip_path()) as archive:
    if layout == 'unzipped':
      archive.extractall(manual)
    elif layout == 'double_click':
      archive.extractall(manual / ZIP[:-4])
    else:  # Kaggle's per-file downloads: train.csv and train_images.zip.
      manual.mkdir()
      (manual / 'train.csv').write_bytes(archive.read('train.csv'))
      with zipfile.ZipFile(manual / 'train_images.zip', 'w') as images:
        for name in archive.namelist():
          if name.startswith('train_images/'):
            images.writestr(name.split('/')[-1], archive.read(name))
  splits = testing.read_splits(
      testing.build(NAME, str(manual), str(tmp_path / 'data')), ('id_code',))
  for split, rows in splits.items():
    assert testing.values(rows, 'id_code') == testing.values(
        built[split], 'id_code')


def test_large_images_are_shrunk_to_a_512_short_side():
  image = Image.fromarray(np.full((700, 600, 3), 128, np.uint8))
  buf = io.BytesIO()
  image.save(buf, format='PNG')
  data = common.check_image(buf.getvalue(), source='x.png', max_short_side=512,
                            reencode_format='JPEG')
  with Image.open(io.BytesIO(data)) as out:
    assert (out.format, out.size, out.mode) == ('JPEG', (512, 597), 'RGB')
  # Small RGB images pass through byte for byte.
  small = io.BytesIO()
  Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(small, format='PNG')
  assert common.check_image(small.getvalue(), source='s.png',
                            max_short_side=512) == small.getvalue()


# --- Bad input. --------------------------------------------------------------


def _broken(tmp_path, edit):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  testing.rewrite_zip(os.path.join(manual, ZIP), edit)
  return manual


def _first_id():
  with zipfile.ZipFile(_zip_path()) as archive:
    return archive.read('train.csv').decode().split()[1].split(',')[0]


def _fails(tmp_path, manual, error, *fragments):
  return testing.assert_build_fails(NAME, manual, tmp_path / 'data', error,
                                    *fragments)


@pytest.mark.parametrize('state', ['missing', 'empty'])
def test_missing_manual_files_list_what_to_download(tmp_path, state):
  manual = tmp_path / 'manual'
  if state == 'empty':
    manual.mkdir()
  _fails(tmp_path, manual, common.ManualFilesMissing, str(manual), ZIP,
         'https://www.kaggle.com/competitions/aptos2019-blindness-detection')


def test_csv_row_without_image(tmp_path):
  id_code = _first_id()
  manual = _broken(tmp_path, lambda m: m.pop(f'train_images/{id_code}.png'))
  _fails(tmp_path, manual, common.DataError, f'{ZIP}:train.csv',
         f'{id_code}.png', '1 image(s)')


def test_undecodable_image(tmp_path):
  id_code = _first_id()
  manual = _broken(tmp_path, lambda m: m.update(
      {f'train_images/{id_code}.png': testing.truncated_png()}))
  _fails(tmp_path, manual, common.DataError,
         f'{ZIP}:train_images/{id_code}.png', 'not a decodable image')


def test_unknown_grade(tmp_path):
  def edit(members):
    members['train.csv'] = members['train.csv'].replace(b',4\n', b',5\n', 1)
  _fails(tmp_path, _broken(tmp_path, edit), common.DataError,
         'train.csv, line 6', "unknown diagnosis '5'", '0, 1, 2, 3, 4')


def test_csv_with_wrong_columns(tmp_path):
  # The 2015 Kaggle DR competition's trainLabels.csv uses image,level.
  def edit(members):
    members['train.csv'] = members['train.csv'].replace(
        b'id_code,diagnosis', b'image,level')
  _fails(tmp_path, _broken(tmp_path, edit), common.DataError,
         'train.csv: expected columns id_code, diagnosis', 'image, level')


def test_duplicate_rows(tmp_path):
  def edit(members):
    lines = members['train.csv'].split(b'\n')
    members['train.csv'] = b'\n'.join(lines + [lines[1]])
  _fails(tmp_path, _broken(tmp_path, edit), common.DataError, 'appears twice')
