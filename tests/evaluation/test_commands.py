"""evaluate / predict / response_maps end to end on tiny runs: the demo (with
a validation slice, so a best checkpoint is kept) and the dummy CRC-MSI data
(patient-level AUROC)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from danil_jax.configs import crc_msi
from danil_jax.configs import demo
from danil_jax.evaluation import trained_run
from danil_jax.runtime import augment
from danil_jax.trainer import train
from danil_jax.data_prep import testing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))
VALIDATION = 'train[2000:2100]'


def _command(module, *args):
  result = subprocess.run([sys.executable, '-m', f'danil_jax.{module}', *args],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  return result


def _read_log(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """3 epochs of 4 steps on 64 training images; 100 validation images
  scored each epoch; test (800) in batches of 48, the last one padded; the
  final report with flip TTA."""
  config = demo.get_config()
  config.dataset.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.dataset.train_split = 'train[:64]'
  config.eval.validation_split = VALIDATION
  config.num_epochs = 3
  config.log_every_steps = 2
  config.checkpoint_every_steps = 100
  config.input.global_batch_size = 16
  config.input.eval_batch_size = 48
  config.optim.learning_rate = 0.2
  config.method = 'base'  # compiles faster; evaluation is method-blind
  config.eval.tta = 'flips'
  config.lock()
  workdir = str(tmp_path_factory.mktemp('demo_run'))
  report = train.train_and_evaluate(config, workdir)
  # The trainer's own test predictions, before any command rewrites them.
  shutil.copytree(os.path.join(workdir, 'eval'),
                  os.path.join(workdir, 'eval_by_trainer'))
  return workdir, report


def test_best_checkpoint_is_the_epoch_with_the_highest_validation_metric(
    demo_run):
  workdir, _ = demo_run
  evals = [r for r in _read_log(workdir) if r['kind'] == 'eval']
  assert [r['split'] for r in evals] == [VALIDATION] * 3
  assert [r['num_examples'] for r in evals] == [100] * 3
  values = [r['macro_f1'] for r in evals]
  best = evals[int(np.argmax(values))]['step']  # the first of any ties
  final = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  assert final['best']['step'] == best
  assert final['best']['selection_value'] == max(values)
  assert final['best']['select_by'] == 'macro_f1'
  assert os.listdir(os.path.join(workdir, 'checkpoints_best')) == [str(best)]
  assert final['model'] == 'last' and final['step'] == 12
  assert final['split'] == final['best']['split'] == 'test'
  assert final['num_examples'] == final['best']['num_examples'] == 800


def test_a_loaded_run_has_the_checkpoints_weights_and_no_optimiser(demo_run):
  """trained_run.load restores params and BatchNorm statistics from the
  checkpoint's own metadata: equal to orbax's restore of the whole item
  without any target, and no optimiser state is kept."""
  workdir, _ = demo_run
  run = trained_run.load(workdir, 'last')
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(run.step), 'state'))
  assert 'opt_state' in saved and not hasattr(run.state, 'opt_state')
  for name in ('params', 'batch_stats'):
    got, want = getattr(run.state, name), saved[name]
    assert jax.tree.structure(got) == jax.tree.structure(want), name
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_reproduces_the_runs_final_metrics(demo_run):
  workdir, report = demo_run
  final = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  for checkpoint, expected in (('last', final), ('best', final['best'])):
    # With the run's config.eval.tta, as the trainer.
    outdir, metrics = trained_run.evaluate_run(workdir, 'test', checkpoint)
    assert outdir == os.path.join(workdir, 'eval', f'test_{checkpoint}_flips')
    for key in report:
      assert metrics[key] == expected[key], (checkpoint, key)
    assert metrics['step'] == expected['step']
    rows = _read_csv(os.path.join(outdir, 'predictions.csv'))
    assert len(rows) == 800
    names = ['round', 'ringed', 'oval', 'speckled']
    assert list(rows[0]) == ['id', 'label', 'prediction'] + names + [
        f'calibrated_{n}' for n in names]
    for name in ('confusion_matrix.png', 'roc_curves.png',
                 'reliability_diagram.png'):
      assert os.path.getsize(os.path.join(outdir, name)) > 0
    # Temperature scaling of the written probabilities, in numpy.
    assert metrics['calibration'].startswith(
        f"temperature fitted on '{VALIDATION}' (100 images)")
    probabilities = np.array([[float(r[n]) for n in names] for r in rows])
    scaled = np.exp(np.log(probabilities) / metrics['temperature'])
    np.testing.assert_allclose(
        [[float(r[f'calibrated_{n}']) for n in names] for r in rows],
        scaled / scaled.sum(1, keepdims=True), atol=1e-5)


def test_evaluate_without_tta_on_its_own_folder(demo_run):
  workdir, _ = demo_run
  final = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  outdir, metrics = trained_run.evaluate_run(workdir, 'test', 'last',
                                             tta='none')
  assert outdir == os.path.join(workdir, 'eval', 'test_last')
  assert metrics['tta'] == 'none' and final['tta'] == 'flips'
  for key in ('ece', 'ece_calibrated', 'brier', 'temperature'):
    assert metrics[key] != final[key], key
  plain = _read_csv(os.path.join(outdir, 'predictions.csv'))
  rows = _read_csv(os.path.join(workdir, 'eval_by_trainer', 'test_last_flips',
                                'predictions.csv'))
  assert len(rows) == len(plain) == 800
  # The test images are not flip-symmetric: the probabilities move.
  assert any(abs(float(a['oval']) - float(b['oval'])) > 1e-3
             for a, b in zip(rows, plain))


def test_predict_on_pngs_gives_the_probabilities_of_evaluate(demo_run,
                                                             tmp_path):
  workdir, _ = demo_run
  run = trained_run.load(workdir, 'last')
  source = run.builder.as_data_source('test')
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(6):
    Image.fromarray(source[i]['image']).save(images / f'img{i}.png')
  (images / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  with pytest.raises(ValueError, match='broken.jpg: not a readable image'):
    trained_run.predict_files(run, trained_run.image_paths(str(images)))
  # Any size, greyscale or RGBA: one row each.
  odd = tmp_path / 'odd'
  odd.mkdir()
  Image.fromarray(np.full((70, 50, 4), 90, np.uint8)).save(odd / 'rgba.png')
  Image.fromarray(np.full((20, 33), 200, np.uint8)).save(odd / 'grey.jpg')
  rows, bad = trained_run.predict_files(run, trained_run.image_paths(
      str(odd / '*')))
  assert not bad and [os.path.basename(p) for p, _ in rows] == [
      'grey.jpg', 'rgba.png']
  for _, probabilities in rows:
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
  out = tmp_path / 'preds.csv'
  result = _command('predict', f'--workdir={workdir}',
                    f'--images={images}/*', f'--out={out}', '--skip_bad')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'broken.jpg' in result.stderr
  rows = _read_csv(out)
  assert [os.path.basename(r['file']) for r in rows] == [
      f'img{i}.png' for i in range(6)]
  # Both with the run's flip TTA.
  evaluated = _read_csv(os.path.join(workdir, 'eval_by_trainer',
                                     'test_last_flips', 'predictions.csv'))
  for i, row in enumerate(rows):
    assert row['prediction'] == evaluated[i]['prediction']
    np.testing.assert_allclose(
        [float(row[c]) for c in run.class_names],
        [float(evaluated[i][c]) for c in run.class_names], atol=1e-6)


def test_response_maps_png_and_maps_equal_reference_gradients(demo_run,
                                                              tmp_path):
  workdir, _ = demo_run
  out = tmp_path / 'maps.png'
  result = _command('response_maps', f'--workdir={workdir}', '--num=3',
                    f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert out.stat().st_size > 0
  maps = np.load(tmp_path / 'maps.npz')
  run = trained_run.load(workdir, 'last')
  source = run.builder.as_data_source('test')
  variables = {'params': run.state.params,
               'batch_stats': run.state.batch_stats}
  assert list(maps['indices']) == [0, 400, 799]

  @jax.jit
  def grad(variables, x, y):  # the reference: one jax.grad per image and y
    def loss(xi):
      logits = run.model.apply(variables, xi[None], train=False)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y[None])[0]
    return jax.grad(loss)(x)

  for row, index in enumerate(maps['indices']):
    record = source[int(index)]
    x = augment.eval_transform(record['image'], size=32, mean=run.pre.mean,
                               std=run.pre.std)
    logits = np.asarray(run.model.apply(variables, x[None], train=False))[0]
    order = np.argsort(-logits)
    label = int(record['label'])
    y_minus = order[1] if order[0] == label else order[0]

    assert maps['labels'][row] == label and maps['y_minus'][row] == y_minus
    np.testing.assert_allclose(maps['a_plus'][row],
                               grad(variables, x, np.int32(label)),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps['a_minus'][row],
                               grad(variables, x, np.int32(y_minus)),
                               rtol=1e-4, atol=1e-7)


def test_evaluate_map_distance_summarises_its_per_image_column(demo_run):
  """`evaluate --map_distance`: the metrics.json block is the median and
  quartiles of the predictions.csv column over all, misclassified and
  near-miss rows (computed here from the csv), y- the top wrong class.
  Without TTA, so the csv's predictions are those of the maps' forward pass
  (tests/evaluation/test_map_distance.py checks the distances themselves)."""
  workdir, _ = demo_run
  result = _command('evaluate', f'--workdir={workdir}', '--checkpoint=best',
                    '--tta=none', '--map_distance')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '||A+ - A-||^2, y- the top wrong class' in result.stdout
  outdir = os.path.join(workdir, 'eval', 'test_best')
  block = json.load(open(os.path.join(outdir, 'metrics.json')))[
      'map_distance']
  rows = _read_csv(os.path.join(outdir, 'predictions.csv'))
  names = ['round', 'ringed', 'oval', 'speckled']
  distance = np.array([float(r['map_distance']) for r in rows])
  probabilities = np.array([[float(r[n]) for n in names] for r in rows])
  top2 = np.sort(probabilities, axis=1)[:, -2:]
  near = np.argsort(top2[:, 1] - top2[:, 0], kind='stable')[:80]
  wrong = np.array([r['label'] != r['prediction'] for r in rows])
  assert 0 < wrong.sum() < 800
  for group, values in (('all', distance), ('misclassified', distance[wrong]),
                        ('near_miss', distance[near])):
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    assert block[group] == dict(
        median=pytest.approx(median, rel=1e-6), q1=pytest.approx(q1, rel=1e-6),
        q3=pytest.approx(q3, rel=1e-6), count=len(values)), group
  for row in rows:
    others = [n for n in names if n != row['label']]
    top_wrong = max(others, key=lambda n: float(row[n]))
    assert row['y_minus'] == top_wrong


def test_response_maps_of_near_misses_beside_another_run(demo_run,
                                                         tmp_path):
  """--near_misses: the images of smallest top-2 margin, here from the
  model's logits image by image; --beside: a second run's maps of them (the
  same run here, so the same maps)."""
  workdir, _ = demo_run
  out = tmp_path / 'near.png'
  result = _command('response_maps', f'--workdir={workdir}', '--num=3',
                    '--near_misses', f'--beside={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert out.read_bytes()[:4] == b'\x89PNG'
  maps, beside = np.load(tmp_path / 'near.npz'), np.load(
      tmp_path / 'near_beside.npz')
  run = trained_run.load(workdir, 'last')
  source = run.builder.as_data_source('test')
  images = np.stack([augment.eval_transform(
      source[i]['image'], size=32, mean=run.pre.mean, std=run.pre.std)
                     for i in range(len(source))])
  logits = np.asarray(run.model.apply(
      {'params': run.state.params, 'batch_stats': run.state.batch_stats},
      images, train=False), np.float64)
  p = np.sort(np.exp(logits - logits.max(1, keepdims=True)), axis=1)
  p /= p.sum(1, keepdims=True)
  margin = p[:, -1] - p[:, -2]
  assert sorted(margin[maps['indices']]) == pytest.approx(
      sorted(margin)[:3], abs=1e-6)
  np.testing.assert_array_equal(beside['indices'], maps['indices'])
  np.testing.assert_allclose(beside['distance'], maps['distance'], rtol=1e-6)


def test_tensorboard_has_the_runs_scalars(demo_run):
  from tensorboard.backend.event_processing import event_accumulator
  workdir, _ = demo_run
  acc = event_accumulator.EventAccumulator(os.path.join(workdir,
                                                        'tensorboard'))
  acc.Reload()
  log = _read_log(workdir)
  train_loss = [(r['step'], r['loss']) for r in log if r['kind'] == 'train']
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == [
      (s, pytest.approx(v, rel=1e-6)) for s, v in train_loss]
  evals = [(r['step'], r['macro_f1']) for r in log if r['kind'] == 'eval']
  assert [(e.step, e.value) for e in acc.Scalars(f'{VALIDATION}/macro_f1')
          ] == [(s, pytest.approx(v, rel=1e-6)) for s, v in evals]
  assert 'test_best/macro_f1' in acc.Tags()['scalars']


def test_crc_msi_run_and_evaluate_report_patient_level_auroc(tmp_path):
  data_dir = str(tmp_path / 'data')
  testing.build('crc_msi', testing.dummy_dir('crc_msi'), data_dir)
  config = crc_msi.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.train_split = 'train'  # 'auto' then selects on validation
  config.dataset.image_size = 16
  config.model.name = 'small_resnet'
  config.method = 'base'
  config.num_epochs = 2
  config.log_every_steps = 1
  config.input.global_batch_size = 4
  config.input.eval_batch_size = 8
  config.input.num_workers = 0
  config.eval.patient_min_tiles = 1
  config.eval.bootstrap_samples = 20
  config.lock()
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  evals = [r for r in _read_log(workdir) if r['kind'] == 'eval']
  assert [r['split'] for r in evals] == ['validation'] * 2
  assert all('patient_auroc' in r for r in evals)
  result = _command('evaluate', f'--workdir={workdir}', '--checkpoint=best')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('test metrics of the best model')
  assert 'patient_auroc' in result.stdout.splitlines()[1]
  metrics = json.load(open(os.path.join(workdir, 'eval', 'test_best',
                                        'metrics.json')))
  final = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  for key in ('patient_auroc', 'patient_auroc_ci95', 'patient_auroc_mean_prob',
              'num_patients', 'macro_f1', 'loss'):
    assert metrics[key] == final['best'][key]
  rows = _read_csv(os.path.join(workdir, 'eval', 'test_best',
                                'predictions.csv'))
  assert len(rows) == 12
  assert rows[0]['id'] == rows[0]['filename'] and rows[0]['patient_id']
  assert {r['label'] for r in rows} == {'MSIMUT', 'MSS'}
  num_patients = len({r['patient_id'] for r in rows})
  assert metrics['num_patients'] == num_patients
