"""CRC-MSI builder: the zenodo zips and unzipped layouts, splits, bad input."""

import os
import zipfile

import pytest

from danil_jax.data_prep import common
from danil_jax.data_prep import testing

NAME = 'crc_msi'
SIZES = {'train': 21, 'validation': 3, 'test': 12}
FIELDS = ('filename', 'patient_id', 'slide_id', 'label', 'image')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('data'))
  return testing.read_splits(
      testing.build(NAME, testing.dummy_dir(NAME), data_dir), FIELDS)


def _members(split, cls):
  path = os.path.join(testing.dummy_dir(NAME), f'CRC_DX_{split}_{cls}.zip')
  with zipfile.ZipFile(path) as archive:
    return [n.split('/')[-1] for n in archive.namelist()]


def test_official_split_labels_and_patient_ids(built):
  assert {k: len(v) for k, v in built.items()} == SIZES
  test_files = testing.values(built['test'], 'filename')
  assert test_files == set(_members('TEST', 'MSIMUT') + _members('TEST', 'MSS'))
  for row in sum(built.values(), []):
    # Label from the archive, patient from the TCGA barcode in the name.
    in_msimut = (row['filename'] in _members('TRAIN', 'MSIMUT') +
                 _members('TEST', 'MSIMUT'))
    assert row['label'] == (0 if in_msimut else 1)
    barcode = row['filename'].split('-', 2)[2]
    assert row['patient_id'] == barcode[:12]
    assert row['slide_id'] == barcode[:-4]
    assert row['image'].shape == (16, 16, 3)


def test_validation_holds_out_whole_patients(built):
  patients = {k: testing.values(v, 'patient_id') for k, v in built.items()}
  assert patients['validation']
  assert not patients['train'] & patients['validation']
  assert not patients['train'] & patients['test']
  assert not patients['validation'] & patients['test']


@pytest.mark.parametrize('layout', ['own_dir', 'split_dirs'])
def test_unzipped_layouts_give_the_same_splits(built, tmp_path, layout):
  manual = tmp_path / 'manual'
  for split in ('TRAIN', 'TEST'):
    for cls in ('MSIMUT', 'MSS'):
      name = f'CRC_DX_{split}_{cls}'
      target = manual / (name if layout == 'own_dir' else f'CRC_DX_{split}')
      with zipfile.ZipFile(os.path.join(testing.dummy_dir(NAME),
                                        name + '.zip')) as archive:
        archive.extractall(target)
  splits = testing.read_splits(
      testing.build(NAME, str(manual), str(tmp_path / 'data')), ('filename',))
  for split, rows in splits.items():
    assert testing.values(rows, 'filename') == testing.values(
        built[split], 'filename')


# --- Bad input. --------------------------------------------------------------


def _fails(tmp_path, manual, error, *fragments):
  return testing.assert_build_fails(NAME, manual, tmp_path / 'data', error,
                                    *fragments)


def _broken(tmp_path, archive, edit):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  testing.rewrite_zip(os.path.join(manual, archive), edit)
  return manual


@pytest.mark.parametrize('state', ['missing', 'empty'])
def test_missing_manual_dir_lists_the_four_zips(tmp_path, state):
  manual = tmp_path / 'manual'
  if state == 'empty':
    manual.mkdir()
  _fails(tmp_path, manual, common.ManualFilesMissing, str(manual),
         'CRC_DX_TRAIN_MSIMUT.zip', 'CRC_DX_TEST_MSS.zip',
         'https://zenodo.org/records/2530835')


def test_one_missing_archive_is_named(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  os.remove(os.path.join(manual, 'CRC_DX_TEST_MSIMUT.zip'))
  error = _fails(tmp_path, manual, common.ManualFilesMissing,
                 'has no CRC_DX_TEST_MSIMUT.zip (it contains: CRC_DX_TEST_MSS')
  assert 'has no CRC_DX_TRAIN' not in str(error)


def test_undecodable_tile(tmp_path):
  tile = 'MSS/blk-AAAAAAAAAAAA-TCGA-A2-2610-01Z-00-DX1.png'
  manual = _broken(tmp_path, 'CRC_DX_TEST_MSS.zip',
                   lambda m: m.update({tile: testing.truncated_png()}))
  _fails(tmp_path, manual, common.DataError,
         f'CRC_DX_TEST_MSS.zip:{tile}', 'not a decodable image')


def test_unexpected_file_name(tmp_path):
  manual = _broken(tmp_path, 'CRC_DX_TRAIN_MSS.zip', lambda m: m.update(
      {'MSS/tile_0001.png': testing.truncated_png()}))
  _fails(tmp_path, manual, common.DataError, 'CRC_DX_TRAIN_MSS.zip',
         'tile_0001.png', 'expected tiles named blk-<id>-TCGA-XX-XXXX')


def test_tile_in_both_classes(tmp_path):
  tile = _members('TRAIN', 'MSS')[0]
  with zipfile.ZipFile(os.path.join(testing.dummy_dir(NAME),
                                    'CRC_DX_TRAIN_MSS.zip')) as archive:
    data = archive.read('MSS/' + tile)
  manual = _broken(tmp_path, 'CRC_DX_TRAIN_MSIMUT.zip',
                   lambda m: m.update({'MSIMUT/' + tile: data}))
  _fails(tmp_path, manual, common.DataError, tile, 'expected each tile once')


def test_archive_without_tiles(tmp_path):
  manual = _broken(tmp_path, 'CRC_DX_TEST_MSS.zip', lambda m: m.clear())
  _fails(tmp_path, manual, common.DataError, 'CRC_DX_TEST_MSS.zip',
         'contains no PNG tiles')
