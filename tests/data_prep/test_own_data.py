"""A user's folder or CSV as a data set (danil_jax/data_prep/own): layouts, splits,
leakage, a changed source, every bad input, formats, worker processes."""

import csv
import glob
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from danil_jax import data_prep
from danil_jax.configs import folder
from danil_jax.data_prep import testing
from danil_jax.data_prep.own import builder as builder_lib
from danil_jax.data_prep.own import dataset as own
from danil_jax.data_prep.own import fixtures
from danil_jax.data_prep.own import images
from danil_jax.data_prep.own import sources
from danil_jax.data_prep.own import splits as splits_lib

FIELDS = ('filename', 'label', 'group', 'image')


def _dataset(tmp_path, root=None, csv_file=None, class_names=(), **options):
  dataset = folder.get_config().dataset
  dataset.data_dir = str(tmp_path / 'data')
  dataset.manual_dir = str(root or '')
  dataset.csv = str(csv_file or '')
  dataset.class_names = tuple(class_names)
  dataset.own.workers = 1
  dataset.own.group_regex = r'(P\d+)_'
  for key, value in options.items():
    dataset.own[key] = value
  return dataset


def _read(builder):
  return testing.read_splits(builder, FIELDS)


def _splits_csv(builder):
  with open(os.path.join(builder.data_dir, builder_lib.SPLITS_CSV)) as f:
    return list(csv.DictReader(f))


def _fails(dataset, error, *fragments):
  """Opening `dataset` raises `error` with every fragment; nothing is left
  that reads as built."""
  with pytest.raises(error) as info:
    data_prep.open_dataset(dataset)
  for fragment in fragments:
    assert fragment in str(info.value)
  assert not glob.glob(os.path.join(dataset.data_dir, 'folder', '*', '*',
                                    'dataset_info.json'))
  assert not glob.glob(os.path.join(dataset.data_dir, '**', 'incomplete*'),
                       recursive=True)
  return str(info.value)


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  """3 classes x 6 patients x 2 images, splits made."""
  tmp = tmp_path_factory.mktemp('made')
  fixtures.make_folder(str(tmp / 'dir'), ('cyst', 'benign', 'malignant'))
  dataset = _dataset(tmp, tmp / 'dir')
  builder = data_prep.open_dataset(dataset)
  return tmp / 'dir', dataset, builder, _read(builder)


def test_folder_classes_splits_and_images(made):
  root, _, builder, rows = made
  assert builder.info.features['label'].names == ['benign', 'cyst',
                                                  'malignant']
  sizes = {k: len(v) for k, v in rows.items()}
  # 20% and 10% of 36 images in whole patients of 2, at least one patient
  # of each class in each split.
  assert sum(sizes.values()) == 36 and 6 <= sizes['test'] <= 10
  assert 6 <= sizes['validation'] <= 6
  names = builder.info.features['label'].names
  for split, examples in rows.items():
    assert {r['label'] for r in examples} == {0, 1, 2}, split
    for r in examples:
      assert names[r['label']] == r['filename'].split('/')[0]
      assert r['group'] == r['filename'].split('/')[1].split('_')[0]
      np.testing.assert_array_equal(
          r['image'], np.asarray(Image.open(root / r['filename'])))


def test_made_splits_hold_out_whole_patients(made):
  _, _, _, rows = made
  groups = {s: {r['group'] for r in v} for s, v in rows.items()}
  assert not groups['train'] & groups['test']
  assert not groups['train'] & groups['validation']
  assert not groups['validation'] & groups['test']


def test_splits_csv_lists_what_was_built(made):
  _, _, builder, rows = made
  listed = {(r['path'], r['label'], r['group'], r['split'])
            for r in _splits_csv(builder)}
  names = builder.info.features['label'].names
  built = {(r['filename'], names[r['label']], r['group'], split)
           for split, examples in rows.items() for r in examples}
  assert listed == built


def test_splits_are_deterministic_and_follow_the_seed(made, tmp_path):
  root, _, _, rows = made
  again = _read(data_prep.open_dataset(_dataset(tmp_path / 'a', root)))
  assert {s: sorted(r['filename'] for r in v) for s, v in again.items()} == {
      s: sorted(r['filename'] for r in v) for s, v in rows.items()}
  other = _read(data_prep.open_dataset(_dataset(tmp_path / 'b', root,
                                                seed=5)))
  assert ({r['filename'] for r in other['test']} !=
          {r['filename'] for r in rows['test']})


def test_reopening_reuses_the_build(made, capsys):
  _, dataset, builder, _ = made
  stamp = os.path.getmtime(os.path.join(builder.data_dir, 'splits.csv'))
  assert data_prep.open_dataset(dataset).data_dir == builder.data_dir
  assert os.path.getmtime(os.path.join(builder.data_dir,
                                       'splits.csv')) == stamp
  assert 'building' not in capsys.readouterr().out
  # Read only (predict): the class names without a scan.
  assert data_prep.dataset_builder(dataset).info.features[
      'label'].names == ['benign', 'cyst', 'malignant']


def test_a_waiting_host_opens_the_build_but_never_builds(made, tmp_path):
  root, dataset, builder, _ = made
  assert data_prep.open_dataset(dataset, build=False).data_dir == (
      builder.data_dir)
  with pytest.raises(data_prep.common.DataError, match='not built in'):
    data_prep.open_dataset(_dataset(tmp_path, root), build=False)


def test_patient_subfolders_give_the_groups(tmp_path):
  root = tmp_path / 'dir'
  for c, name in enumerate(('benign', 'malignant')):
    for p in range(6):
      os.makedirs(root / name / f'patient{c}{p}')
      for i in range(2):
        Image.fromarray(fixtures.pattern(p * 2 + i, c)).save(
            root / name / f'patient{c}{p}' / f'{i}.png')
  rows = _read(data_prep.open_dataset(_dataset(
      tmp_path, root, group_regex=r'^[^/]+/([^/]+)/')))
  for examples in rows.values():
    for r in examples:
      assert r['group'] == r['filename'].split('/')[1]
  groups = {s: {r['group'] for r in v} for s, v in rows.items()}
  assert not groups['train'] & (groups['test'] | groups['validation'])


def test_relative_folder_paths_are_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  dataset = folder.get_config().dataset
  dataset.manual_dir, dataset.csv = 'images', '~/t.csv'
  data_prep.own_dataset.absolute_paths(dataset)
  assert dataset.manual_dir == str(tmp_path / 'images')
  assert dataset.csv == os.path.expanduser('~/t.csv')


def test_class_names_in_the_config_set_the_label_order(made, tmp_path):
  root = made[0]
  builder = data_prep.open_dataset(_dataset(
      tmp_path, root, class_names=('malignant', 'cyst', 'benign')))
  names = builder.info.features['label'].names
  assert names == ['malignant', 'cyst', 'benign']
  for r in _read(builder)['train']:
    assert names[r['label']] == r['filename'].split('/')[0]


def test_given_split_folders_are_kept_and_validation_is_carved(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root), split='train')
  test = fixtures.make_folder(str(root), patients=2, split='test', first=6)
  rows = _read(data_prep.open_dataset(_dataset(tmp_path, root)))
  assert {r['filename'] for r in rows['test']} == set(test)
  assert all(r['filename'].startswith('train/')
             for s in ('train', 'validation') for r in rows[s])
  assert rows['validation'] and not (
      {r['group'] for r in rows['train']} &
      {r['group'] for r in rows['validation']})


# --- CSV. --------------------------------------------------------------------


def test_csv_relative_and_absolute_paths_groups_and_splits(tmp_path):
  paths = fixtures.make_folder(str(tmp_path / 'img'), ('0', '1'), patients=4)
  table = fixtures.write_table(
      str(tmp_path / 'labels.csv'), ['path', 'label', 'group', 'split'],
      [[f'img/{p}' if i % 2 else str(tmp_path / 'img' / p),
        # numeric labels, '10' after '2'
        {'0': '2', '1': '10'}[p.split('/')[0]], p.split('/')[1][:4],
        'test' if p.split('/')[1][3] == '0' else 'train']
       for i, p in enumerate(paths)])
  builder = data_prep.open_dataset(_dataset(tmp_path, csv_file=table))
  assert builder.info.features['label'].names == ['2', '10']
  rows = _read(builder)
  assert set(rows) == {'train', 'validation', 'test'}
  assert {r['group'] for r in rows['test']} == {'P000', 'P100'}


def test_tsv_with_other_column_names(tmp_path):
  paths = fixtures.make_folder(str(tmp_path / 'img'))
  table = fixtures.write_table(
      str(tmp_path / 'labels.tsv'), ['file', 'dx', 'patient'],
      [[f'img/{p}', p.split('/')[0], p.split('/')[1][:4]] for p in paths],
      delimiter='\t')
  builder = data_prep.open_dataset(_dataset(
      tmp_path, csv_file=table, path_column='file', label_column='dx',
      group_column='patient'))
  assert sum(len(v) for v in _read(builder).values()) == len(paths)


def _leaky_table(tmp_path):
  paths = fixtures.make_folder(str(tmp_path / 'img'), patients=4)
  rows = [[f'img/{p}', p.split('/')[0], p.split('/')[1][:4],
           'test' if p.endswith('_1.png') and '00_' in p else 'train']
          for p in paths]
  return fixtures.write_table(str(tmp_path / 't.csv'),
                              ['path', 'label', 'group', 'split'], rows)


def test_a_group_in_two_given_splits_is_an_error_unless_allowed(tmp_path):
  table = _leaky_table(tmp_path)
  message = _fails(_dataset(tmp_path, csv_file=table),
                   splits_lib.GroupLeakage, '2 group(s)', 'P000 (test/train)',
                   'allow_shared_groups')
  assert 'P100 (test/train)' in message
  builder = data_prep.open_dataset(_dataset(tmp_path, csv_file=table,
                                            allow_shared_groups=True))
  assert len(_read(builder)['test']) == 2


# --- A changed source. -------------------------------------------------------


def test_a_changed_folder_is_rebuilt_saying_what_changed(tmp_path, capsys):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root))
  dataset = _dataset(tmp_path, root)
  data_prep.open_dataset(dataset)
  shutil.copy(root / 'benign' / 'P000_0.png', root / 'benign' / 'P099_0.png')
  os.remove(root / 'malignant' / 'P100_1.png')
  capsys.readouterr()
  rows = _read(data_prep.open_dataset(dataset))
  out = capsys.readouterr().out
  assert '1 file(s) added (benign/P099_0.png)' in out
  assert '1 file(s) removed (malignant/P100_1.png)' in out
  assert 'rebuilding' in out
  names = {r['filename'] for v in rows.values() for r in v}
  assert 'benign/P099_0.png' in names and 'malignant/P100_1.png' not in names


def test_a_relabelled_csv_is_refused_when_asked(tmp_path):
  paths = fixtures.make_folder(str(tmp_path / 'img'))
  rows = [[f'img/{p}', p.split('/')[0]] for p in paths]
  table = fixtures.write_table(str(tmp_path / 't.csv'), ['path', 'label'],
                               rows)
  dataset = _dataset(tmp_path, csv_file=table, on_change='refuse')
  built = data_prep.open_dataset(dataset)
  rows[0][1] = 'malignant'
  fixtures.write_table(table, ['path', 'label'], rows)
  with pytest.raises(own.StaleData, match=r'1 file\(s\) relabelled \(img/'
                     r'benign/P000_0.png\).*refuse'):
    data_prep.open_dataset(dataset)
  assert os.path.exists(os.path.join(built.data_dir, 'dataset_info.json'))
  # A host that waits for process 0 never rebuilds.
  dataset.own.on_change = 'rebuild'
  with pytest.raises(own.StaleData, match='every host'):
    data_prep.open_dataset(dataset, build=False)


# --- Bad input: a named error, nothing built. --------------------------------


def test_unreadable_images_are_all_listed(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root))
  for name in ('benign/P000_0.png', 'malignant/P105_1.png'):
    (root / name).write_bytes(b'garbage')
  _fails(_dataset(tmp_path, root), builder_lib.UnreadableImages,
         '2 unreadable image file(s)', 'P000_0.png', 'P105_1.png', 'skip_bad')


def test_skip_bad_leaves_them_out_and_lists_them(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root))
  (root / 'benign' / 'P000_0.png').write_bytes(b'garbage')
  frames = [Image.fromarray(fixtures.pattern(i, 0)) for i in range(2)]
  frames[0].save(root / 'benign' / 'P001_5.tif', save_all=True,
                 append_images=frames[1:])
  builder = data_prep.open_dataset(_dataset(tmp_path, root, skip_bad=True))
  with open(os.path.join(builder.data_dir, builder_lib.SKIPPED_CSV)) as f:
    skipped = {r['path']: r['reason'] for r in csv.DictReader(f)}
  assert set(skipped) == {'benign/P000_0.png', 'benign/P001_5.tif'}
  assert '2 frames' in skipped['benign/P001_5.tif']
  kept = {r['path'] for r in _splits_csv(builder)}
  assert len(kept) == 23 and not kept & set(skipped)


def _table(tmp_path, rows, header=('path', 'label')):
  fixtures.make_folder(str(tmp_path / 'img'))
  return fixtures.write_table(str(tmp_path / 't.csv'), header, rows)


def test_missing_files_are_listed_with_their_lines(tmp_path):
  rows = [[f'img/benign/P00{i}_0.png', 'benign'] for i in range(6)] + [
      [f'img/nowhere/{i}.png', 'malignant'] for i in range(12)]
  _fails(_dataset(tmp_path, csv_file=_table(tmp_path, rows)),
         sources.MissingFiles, '12 row(s)', 't.csv, line 8 (img/nowhere/0.png)',
         '(2 more)')


def test_unknown_labels_and_empty_classes(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root), ('benign', 'malignant', 'naevus'))
  _fails(_dataset(tmp_path, root, class_names=('benign', 'malignant')),
         sources.UnknownLabels, '12 image(s)', "('naevus')")
  _fails(_dataset(tmp_path, root, class_names=(
      'benign', 'malignant', 'naevus', 'melanoma')), sources.EmptyClasses,
         '1 class(es) without any image: melanoma')
  os.makedirs(root / 'empty')
  _fails(_dataset(tmp_path, root), sources.EmptyClasses, 'empty')


def test_too_few_images_of_a_class(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root))
  fixtures.make_folder(str(root), ('rare',), patients=2)
  _fails(_dataset(tmp_path, root), splits_lib.TooFewImages,
         'at least 3 different groups', 'rare (2)')


def test_a_single_class(tmp_path):
  root = tmp_path / 'dir'
  fixtures.make_folder(str(root), ('benign',))
  _fails(_dataset(tmp_path, root), sources.TooFewClasses, "['benign']")


def test_duplicate_paths(tmp_path):
  rows = [[f'img/benign/P00{i}_0.png', 'benign'] for i in range(6)]
  rows.append(['img/benign/P000_0.png', 'malignant'])
  _fails(_dataset(tmp_path, csv_file=_table(tmp_path, rows)),
         sources.DuplicatePaths, '1 file(s)', 'lines 2, 8')


# --- Formats and workers. ----------------------------------------------------


def test_every_format_in_one_folder(tmp_path):
  pydicom = pytest.importorskip('pydicom')
  root = tmp_path / 'dir'
  gray16 = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 150)
  for c, name in enumerate(('a', 'b')):
    os.makedirs(root / name)
    for p in range(4):
      rgb = fixtures.pattern(p, c)
      stem = root / name / f'P{c}{p}_'
      Image.fromarray(rgb).save(f'{stem}0.png')
      Image.fromarray(rgb).save(f'{stem}1.jpg')
      Image.fromarray(rgb).save(f'{stem}2.bmp')
      Image.fromarray(gray16 + p).save(f'{stem}3.tif')
      Image.fromarray(rgb[:, :, 0]).save(f'{stem}4.png')
      Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(f'{stem}5.png')
      real = ('CT_small.dcm', 'MR_small.dcm')[c]
      shutil.copy(pydicom.data.get_testdata_file(real), f'{stem}6.dcm')
  files = sorted(str(p.relative_to(root)) for p in root.glob('*/*'))
  table = fixtures.write_table(str(root / 'labels.csv'), ['path', 'label'],
                               [[f, f.split('/')[0]] for f in files])
  for kind, dataset in (('folder', _dataset(tmp_path / 'f', root)),
                        ('csv', _dataset(tmp_path / 'c', csv_file=table))):
    rows = _read(data_prep.open_dataset(dataset))
    assert sum(len(v) for v in rows.values()) == 2 * 4 * 7, kind
    for r in (r for v in rows.values() for r in v):
      np.testing.assert_array_equal(
          r['image'], images.read_rgb(str(root / r['filename'])))


def test_worker_processes_give_the_same_data_set(tmp_path):
  root = tmp_path / 'dir'
  # The train split's 56 images go through the pool (it takes 32 or more).
  fixtures.make_folder(str(root), patients=20, per_patient=2)
  one = _read(data_prep.open_dataset(_dataset(tmp_path / 'one', root)))
  two = _read(data_prep.open_dataset(_dataset(tmp_path / 'two', root,
                                              workers=2)))
  for split, rows in one.items():
    by_name = {r['filename']: r for r in two[split]}
    assert set(by_name) == {r['filename'] for r in rows}
    for r in rows:
      np.testing.assert_array_equal(r['image'], by_name[r['filename']]['image'])
