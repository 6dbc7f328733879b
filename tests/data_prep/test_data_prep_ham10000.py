"""HAM10000 builder: both download layouts, the splits, and bad input."""

import os
import shutil
import zipfile

import numpy as np
import pytest

from danil_jax import data_prep
from danil_jax.data_prep import common
from danil_jax.data_prep import testing
from danil_jax.data_prep.ham10000 import builder as ham

NAME = 'ham10000'
FIELDS = ('image_id', 'lesion_id', 'label', 'age', 'dataset', 'image')
N_IMAGES = 49  # what make_dummy_data writes


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """The fixture built once per config, from the Dataverse zips."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  return {config: testing.read_splits(
      testing.build(NAME, testing.dummy_dir(NAME), data_dir, config), FIELDS)
          for config in ('lesion', 'random')}


def test_lesion_split_sizes_labels_and_features(built):
  splits = built['lesion']
  assert {k: len(v) for k, v in splits.items()} == {
      'train': 30, 'validation': 3, 'test': 16}
  everything = sum(splits.values(), [])
  assert len({r['image_id'] for r in everything}) == N_IMAGES
  # Stratified: every class is in train and in test.
  assert set(testing.label_counts(splits['train'])) == set(range(7))
  assert set(testing.label_counts(splits['test'])) == set(range(7))
  example = splits['train'][0]
  assert example['image'].dtype == np.uint8
  assert example['image'].shape == (18, 24, 3)
  assert example['dataset'] == 'vidir_modern'
  ages = {r['age'] for r in everything}
  assert -1.0 in ages and 55.0 in ages  # 'NA' rows map to -1


def test_lesion_splits_are_disjoint_by_lesion(built):
  lesions = {k: testing.values(v, 'lesion_id')
             for k, v in built['lesion'].items()}
  assert not lesions['train'] & lesions['test']
  assert not lesions['train'] & lesions['validation']
  assert not lesions['validation'] & lesions['test']


def test_random_config_is_a_stratified_image_split(built):
  splits = built['random']
  assert {k: len(v) for k, v in splits.items()} == {
      'train': 31, 'validation': 3, 'test': 15}
  ids = {k: testing.values(v, 'image_id') for k, v in splits.items()}
  assert not ids['train'] & ids['test']
  assert set(testing.label_counts(splits['test'])) == set(range(7))


def test_kaggle_layout_gives_the_same_splits(built, tmp_path):
  """Unzipped folders (both capitalisations) and a CSV without 'dataset'."""
  manual = tmp_path / 'manual'
  for part, folder in ((1, 'HAM10000_images_part_1'),
                       (2, 'ham10000_images_part_2')):
    zip_path = os.path.join(testing.dummy_dir(NAME),
                            f'HAM10000_images_part{part}.zip')
    with zipfile.ZipFile(zip_path) as archive:
      archive.extractall(manual / folder)
  tab = open(os.path.join(testing.dummy_dir(NAME),
                          'HAM10000_metadata.tab')).read()
  csv_lines = [','.join(v.strip('"') for v in line.split('\t')[:7])
               for line in tab.splitlines()]
  (manual / 'HAM10000_metadata.csv').write_text('\n'.join(csv_lines) + '\n')

  splits = testing.read_splits(
      testing.build(NAME, str(manual), str(tmp_path / 'data')),
      ('image_id', 'dataset'))
  # The splits depend on the metadata only, not on the layout.
  for split, rows in splits.items():
    assert testing.values(rows, 'image_id') == testing.values(
        built['lesion'][split], 'image_id')
  assert testing.values(splits['train'], 'dataset') == {''}


# --- Bad input. --------------------------------------------------------------


def _fails(tmp_path, manual, error, *fragments):
  return testing.assert_build_fails(NAME, manual, tmp_path / 'data', error,
                                    *fragments)


@pytest.mark.parametrize('state', ['missing', 'empty', 'unrelated'])
def test_missing_manual_files_list_what_to_download(tmp_path, state):
  manual = tmp_path / 'manual'
  if state != 'missing':
    manual.mkdir()
  if state == 'unrelated':
    (manual / 'notes.txt').write_text('hi')
  error = _fails(tmp_path, manual, common.ManualFilesMissing,
                 str(manual), 'HAM10000_images_part1.zip',
                 'HAM10000_metadata.tab', 'https://doi.org/10.7910/DVN/DBW86T')
  assert {'missing': 'does not exist', 'empty': 'is empty',
          'unrelated': 'notes.txt'}[state] in str(error)
  # Raised before TFDS creates the dataset folder.
  assert not (tmp_path / 'data' / NAME / 'lesion').exists()


def test_metadata_row_without_image(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  testing.rewrite_zip(os.path.join(manual, 'HAM10000_images_part2.zip'),
                      lambda m: m.pop('ISIC_0024307.jpg'))
  _fails(tmp_path, manual, common.DataError, 'HAM10000_metadata.tab',
         'ISIC_0024307.jpg', 'HAM10000_images_part2.zip')


def test_undecodable_image(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  testing.rewrite_zip(os.path.join(manual, 'HAM10000_images_part1.zip'),
                      lambda m: m.update({'ISIC_0024310.jpg': b'\xff\xd8no'}))
  _fails(tmp_path, manual, common.DataError,
         'HAM10000_images_part1.zip:ISIC_0024310.jpg', 'not a decodable image')


def test_unknown_label(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  path = os.path.join(manual, 'HAM10000_metadata.tab')
  lines = open(path).read().splitlines()
  lines[5] = lines[5].replace('"akiec"', '"melanoma"')
  open(path, 'w').write('\n'.join(lines) + '\n')
  _fails(tmp_path, manual, common.DataError, 'HAM10000_metadata.tab, line 6',
         "'melanoma'", 'akiec, bcc, bkl, df, mel, nv, vasc')


def test_metadata_with_wrong_columns(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  path = os.path.join(manual, 'HAM10000_metadata.tab')
  text = open(path).read().replace('"dx"\t', '"diagnosis"\t', 1)
  open(path, 'w').write(text)
  _fails(tmp_path, manual, common.DataError, 'HAM10000_metadata.tab',
         'missing dx', 'diagnosis')


def test_truncated_zip(tmp_path):
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  path = os.path.join(manual, 'HAM10000_images_part1.zip')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])
  _fails(tmp_path, manual, common.DataError, 'HAM10000_images_part1.zip',
         'not a readable zip')


def test_failed_build_then_fixed_build(tmp_path):
  """A failure leaves nothing that blocks or poisons the next build."""
  manual = testing.copy_dummy(NAME, str(tmp_path / 'manual'))
  part1 = os.path.join(manual, 'HAM10000_images_part1.zip')
  shutil.copy(part1, tmp_path / 'good.zip')
  testing.rewrite_zip(part1, lambda m: m.update(
      {'ISIC_0024350.jpg': testing.truncated_png()}))
  _fails(tmp_path, manual, common.DataError, 'ISIC_0024350.jpg')
  shutil.copy(tmp_path / 'good.zip', part1)
  builder = testing.build(NAME, manual, str(tmp_path / 'data'))
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == 30


def test_class_names_match_the_builder():
  builder = data_prep.get_builder(NAME, data_dir='/nonexistent')
  assert builder.info.features['label'].names == ham.CLASSES
