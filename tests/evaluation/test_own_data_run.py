"""A user's folder end to end: train -> evaluate -> predict -> response maps,
the classes taken from the data; a bad folder stops the command in one line.
"""

import csv
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from danil_jax.configs import folder
from danil_jax.evaluation import trained_run
from danil_jax.trainer import train
from danil_jax.data_prep.own import dataset as own_dataset
from danil_jax.data_prep.own import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLASSES = ('benign', 'malignant', 'naevus')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """3 classes x 6 patients x 3 images; 6 steps of a small ResNet."""
  tmp = tmp_path_factory.mktemp('own_run')
  root = tmp / 'images'
  fixtures.make_folder(str(root), CLASSES, patients=6, per_patient=3)
  config = folder.get_config()
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(tmp / 'tfds')
  config.dataset.own.group_regex = r'(P\d+)_'
  config.dataset.image_size = 32
  config.model.name = 'small_resnet'
  config.method = 'base'
  config.num_epochs = 2
  config.max_steps = 6
  config.input.global_batch_size = 8
  config.input.eval_batch_size = 16
  config.input.num_workers = 0
  config.optim.learning_rate = 0.05
  config.eval.patient_key = 'group'
  config.eval.patient_positive_class = 'malignant'
  config.eval.patient_min_tiles = 1
  config.eval.bootstrap_samples = 20
  config.lock()
  workdir = str(tmp / 'work')
  report = train.train_and_evaluate(config, workdir)
  return root, workdir, report


def test_trains_with_the_classes_of_the_folder(run):
  _, workdir, report = run
  assert list(report['per_class_support']) == list(CLASSES)
  assert len(report['confusion_matrix']) == 3
  # By patient, the folder's group: the test split's patients, whole.
  assert 0 <= report['patient_auroc'] <= 1
  assert os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_evaluate_scores_the_test_split_by_patient(run):
  _, workdir, _ = run
  outdir, metrics = trained_run.evaluate_run(workdir, 'test', 'last')
  with open(os.path.join(outdir, 'predictions.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == sum(map(sum, metrics['confusion_matrix']))
  # The path and patient of each image are kept beside its prediction.
  assert {'filename', 'group'} <= set(rows[0])
  assert all(r['filename'].split('/')[1].startswith(r['group'])
             for r in rows)


def test_predict_names_the_folders_classes(run, tmp_path):
  root, workdir, _ = run
  # Without the data set (another machine): the classes the run pinned.
  tfds_dir = os.path.join(os.path.dirname(workdir), 'tfds')
  os.rename(tfds_dir, tfds_dir + '_away')
  try:
    loaded = trained_run.load(workdir, 'last', need_data=False)
  finally:
    os.rename(tfds_dir + '_away', tfds_dir)
  assert loaded.class_names == list(CLASSES)
  files = [str(root / c / f'P{i}00_0.png') for i, c in enumerate(CLASSES)]
  gray16 = tmp_path / 'gray16.png'
  Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(gray16)
  rows, bad = trained_run.predict_files(loaded, files + [str(gray16)])
  assert not bad and len(rows) == 4
  out = tmp_path / 'preds.csv'
  trained_run.write_predictions_csv(str(out), rows, loaded.class_names)
  with open(out) as f:
    header = next(csv.reader(f))
  assert header == ['file', 'prediction', *CLASSES]


def test_response_maps_of_the_folder(run):
  _, workdir, _ = run
  maps = trained_run.compute_maps(trained_run.load(workdir, 'last'),
                                  'validation', 2)
  assert maps['images'].shape[0] == len(maps['indices']) == 2


def test_a_bad_folder_stops_the_command_with_one_line(tmp_path):
  fixtures.make_folder(str(tmp_path / 'images'), ('benign',))
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.main', '--config=configs/folder.py',
       f'--config.dataset.manual_dir={tmp_path / "images"}',
       f'--config.dataset.data_dir={tmp_path / "tfds"}',
       f'--workdir={tmp_path / "work"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'only one class' in last
  assert 'Traceback' not in result.stderr


def test_evaluate_names_a_changed_folder_and_leaves_the_build(run):
  root, workdir, _ = run
  added = root / 'benign' / 'P099_0.png'
  Image.fromarray(fixtures.pattern(99, 0)).save(added)
  try:
    with pytest.raises(own_dataset.StaleData,
                       match=r'1 file\(s\) added \(benign/P099_0.png\)'):
      trained_run.evaluate_run(workdir, 'test', 'last')
  finally:
    os.remove(added)
  trained_run.evaluate_run(workdir, 'test', 'last')  # as it was


def test_bad_folder_options_are_named_before_any_work(tmp_path):
  config = folder.get_config()
  config.dataset.manual_dir = str(tmp_path / 'images')
  config.dataset.own.test_fraction = 0.95
  config.lock()
  with pytest.raises(own_dataset.BadOption, match='test_fraction'):
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()
