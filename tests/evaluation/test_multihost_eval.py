"""The rest of a pod job's life on two processes equals one process.

A demo job with a validation slice scored every epoch (the best checkpoint
kept by accuracy) on 2 processes x 1 device (gloo on CPU), against the same
job on 1 process x 2 devices: the same computation, equal to float
rounding. evaluate, predict and response_maps then run as 2-process x
2-device commands on that workdir, against the training job's own outputs
and the same commands in this process (one device). Two small scripts on 2
processes check that hosts whose metrics differ keep process 0's best
checkpoint, and that a misclassified_only step with float32 maps equals one
device. The demo data is built once, here, and every job shares the
session's XLA cache (conftest.py).
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import portpicker
import pytest
from tests.trainer import test_multihost as jobs

from danil_jax.evaluation import trained_run

VALIDATION = 'train[2000:2100]'
EPOCHS, STEPS_PER_EPOCH = 3, 4
METRICS = ('macro_f1', 'accuracy', 'balanced_accuracy', 'loss', 'macro_auroc')


def _train_command(workdir, data_dir):
  # 12 steps (test_multihost.STEPS): 3 epochs of 64 images in batches of 16.
  return jobs.command(
      workdir, data_dir, '--config.dataset.train_split=train[:64]',
      f'--config.eval.validation_split={VALIDATION}',
      f'--config.num_epochs={EPOCHS}', '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=100',
      '--config.input.eval_batch_size=48', '--config.optim.learning_rate=0.02',
      # Validation accuracy 0.32, 0.33, 0.32: the best is neither the first
      # epoch nor the last.
      '--config.eval.select_by=accuracy',
      '--config.method=base')  # compiles fastest; evaluation is method-blind


def _start_job(argv, tmp_path, name, *, processes, devices):
  """Every process of a job on this machine, on a free loopback port."""
  if processes == 1:
    return [jobs.start(argv, tmp_path / f'{name}_0.log', devices=devices)]
  port = portpicker.pick_unused_port()
  return [jobs.start(argv, tmp_path / f'{name}_{p}.log', devices=devices,
                     process_id=p, num_processes=processes, port=port)
          for p in range(processes)]


def _finish(processes, tmp_path, name, timeout=jobs.JOB_TIMEOUT_S):
  codes = jobs.finish(processes, timeout)
  logs = [jobs.read_log(tmp_path / f'{name}_{p}.log')
          for p in range(len(processes))]
  assert codes == [0] * len(processes), '\n'.join(l[-3000:] for l in logs)
  return logs


def _log(workdir, kind):
  with open(workdir / 'metrics.jsonl') as f:
    return [r for r in map(json.loads, f) if r['kind'] == kind]


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, demo_data_dir):
  """{'pod': 2 processes x 1 device, 'two': 1 x 2} workdirs (the jobs run
  side by side), the data and the temporary directory."""
  tmp_path = tmp_path_factory.mktemp('multihost_eval')
  data_dir = demo_data_dir
  shapes = dict(pod=(2, 1), two=(1, 2))
  started = {name: _start_job(_train_command(tmp_path / name, data_dir),
                              tmp_path, name, processes=p, devices=d)
             for name, (p, d) in shapes.items()}
  for name, processes in started.items():
    _finish(processes, tmp_path, name)
  # The trainer's own test outputs, before any command rewrites them.
  for name in shapes:
    shutil.copytree(tmp_path / name / 'eval',
                    tmp_path / name / 'eval_by_trainer')
  return {name: tmp_path / name for name in shapes} | dict(
      tmp=tmp_path, data=data_dir)


def _assert_same_metrics(got, want, *, rtol):
  assert got['confusion_matrix'] == want['confusion_matrix']
  assert got['num_examples'] == want['num_examples']
  for key in METRICS:
    np.testing.assert_allclose(got[key], want[key], rtol=rtol, err_msg=key)


def test_validation_and_best_checkpoint_on_two_processes(trained):
  pod, two = trained['pod'], trained['two']
  evals = {w: _log(w, 'eval') for w in (pod, two)}
  assert [r['split'] for r in evals[pod]] == [VALIDATION] * EPOCHS
  assert [r['step'] for r in evals[pod]] == [
      STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
  for got, want in zip(evals[pod], evals[two]):
    _assert_same_metrics(got, want, rtol=1e-5)
  # The best step is the first epoch with the highest validation accuracy,
  # read from the log, not from the run's own choice.
  values = [r['accuracy'] for r in evals[pod]]
  best = evals[pod][int(np.argmax(values))]['step']
  assert STEPS_PER_EPOCH < best < EPOCHS * STEPS_PER_EPOCH, values
  finals = {w: json.load(open(w / 'final_metrics.json')) for w in (pod, two)}
  for final in finals.values():
    assert final['best']['step'] == best
    assert final['best']['selection_value'] == max(values)
  for workdir in (pod, two):
    assert os.listdir(workdir / 'checkpoints_best') == [str(best)]
  # The final report on test, with the last and with the best model.
  _assert_same_metrics(finals[pod], finals[two], rtol=1e-5)
  _assert_same_metrics(finals[pod]['best'], finals[two]['best'], rtol=1e-5)
  # checkpoints_best holds the same model as the one-process job's.
  got, want = (jobs.final_state(w, 'checkpoints_best') for w in (pod, two))
  assert got.keys() == want.keys() and int(got["['step']"]) == best
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)


BEST = '''
import sys
import jax, ml_collections, numpy as np
from danil_jax.evaluation import best_checkpoint
from danil_jax.runtime import multihost
multihost.initialize(ml_collections.ConfigDict(dict(
    coordinator_address=sys.argv[1], num_processes=2,
    process_id=int(sys.argv[2]))))
state = multihost.replicate({'w': np.arange(4.0)}, multihost.make_mesh())
manager = best_checkpoint.make_manager(sys.argv[3], 'accuracy')
# At step 2 process 1's accuracy is a hair above process 0's (another CPU's
# rounding): a tie on process 0, better on process 1.
me = jax.process_index()
for step, value in ((1, 0.5), (2, 0.5 + 1e-12 * me), (3, 0.25)):
  better = best_checkpoint.maybe_save(manager, 'accuracy', step, state, value)
  print(f'step {step} better {better}', flush=True)
manager.wait_until_finished()
print('kept', best_checkpoint.best_so_far(manager), flush=True)
manager.close()
'''


def _script(source, tmp_path, name, *args, devices=1,
            timeout=jobs.JOB_TIMEOUT_S):
  """`source` as 2 processes joined on a free port; returns both logs."""
  address = f'localhost:{portpicker.pick_unused_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=jobs.REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  processes = [subprocess.Popen(
      [sys.executable, '-c', source, address, str(p), *map(str, args)],
      cwd=jobs.REPO, env=env, stdout=open(tmp_path / f'{name}_{p}.log', 'w'),
      stderr=subprocess.STDOUT) for p in range(2)]
  return _finish(processes, tmp_path, name, timeout)


def test_a_tie_while_the_last_save_is_in_flight_keeps_the_first(tmp_path):
  """One process: with asynchronous saves orbax read the kept value back
  before it was written (None, which any value beat)."""
  # pylint: disable=g-import-not-at-top
  from danil_jax.evaluation import best_checkpoint
  from danil_jax.runtime import multihost
  # pylint: enable=g-import-not-at-top
  state = multihost.replicate({'w': np.arange(4.0)}, multihost.make_mesh())
  manager = best_checkpoint.make_manager(tmp_path, 'loss')
  decisions = [best_checkpoint.maybe_save(manager, 'loss', step, state, value)
               for step, value in ((1, 0.5), (2, 0.5), (3, 0.75), (4, 0.25))]
  assert decisions == [True, False, False, True]
  assert best_checkpoint.best_so_far(manager) == (4, 0.25)
  manager.close()


def test_hosts_whose_metrics_differ_keep_the_same_best_checkpoint(tmp_path):
  """The decision is process 0's: no host saves alone (which would hang it
  in orbax's save), none keeps another best."""
  # Without the agreement process 1 waits in its save until killed.
  logs = _script(BEST, tmp_path, 'best', tmp_path, timeout=120)
  for log in logs:
    assert ('step 1 better True\nstep 2 better False\nstep 3 better False\n'
            'kept (1, 0.5)') in log, log[-3000:]
  assert os.listdir(tmp_path / 'checkpoints_best') == ['1']


# ------------------------------------------- misclassified_only, map_dtype


def mode_steps(mesh) -> dict:
  """One misclassified_only step (lam 1, SGD lr 1) from the same state on
  batches with 0, 1 and 5 misclassified images, over `mesh`, each host
  feeding its slice, of a float32 model and of a bfloat16 one with float32
  maps: metrics and the new parameters (the old ones minus the gradient) as
  numpy, keyed '<dtype>/<count>/<name>'."""
  # pylint: disable=g-import-not-at-top
  import optax
  from tests.method.test_misclassified_only import _labels_with
  from tests.method.test_misclassified_only import _Net

  from danil_jax.runtime import multihost
  from danil_jax.trainer import train_step
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 6, 6, 2), jnp.float32)
  variables = _Net().init(jax.random.PRNGKey(1), x, train=False)
  replicated, data = multihost.replicated(mesh), multihost.data_sharding(mesh)
  per_process = 16 // jax.process_count()
  mine = slice(jax.process_index() * per_process,
               (jax.process_index() + 1) * per_process)
  out = {}
  for dtype, map_dtype in (('float32', 'compute'), ('bfloat16', 'float32')):
    model = _Net(dtype=jnp.dtype(dtype))
    # y- of the step: the model's train-mode prediction.
    pred = jnp.argmax(model.apply(variables, x, train=True,
                                  mutable=['batch_stats'])[0], -1)
    state = multihost.replicate(train_step.create_train_state(
        model, variables, optax.sgd(1.0), jax.random.PRNGKey(2)), mesh)
    step = jax.jit(train_step.step_for(
        'danil', lam=1.0, eps=1e-4, reduction='batch',
        misclassified_only=True, map_dtype=map_dtype),
                   in_shardings=(replicated, data),
                   out_shardings=(replicated, replicated))
    for count in (0, 1, 5):
      labels = np.asarray(_labels_with(pred, count))
      batch = multihost.global_batch(
          {'image': np.asarray(x)[mine], 'label': labels[mine]}, mesh)
      new_state, metrics = jax.device_get(step(state, batch))
      for key in ('loss', 'ce', 'distraction', 'bucket', 'misclassified'):
        out[f'{dtype}/{count}/{key}'] = np.asarray(metrics[key], np.float64)
      for path, leaf in jax.tree_util.tree_leaves_with_path(
          {'params': new_state.params,
           'batch_stats': new_state.batch_stats}):
        out[f'{dtype}/{count}/{jax.tree_util.keystr(path)}'] = np.asarray(
            leaf)
  return out


MODE_STEPS = '''
import sys
import ml_collections, numpy as np
sys.path.insert(0, '.')
from danil_jax.runtime import multihost
multihost.initialize(ml_collections.ConfigDict(dict(
    coordinator_address=sys.argv[1], num_processes=2,
    process_id=int(sys.argv[2]))))
from tests.evaluation import test_multihost_eval
out = test_multihost_eval.mode_steps(multihost.make_mesh())
if multihost.is_chief():
  np.savez(sys.argv[3], **out)
'''


def test_misclassified_only_on_two_processes_equals_one_device(tmp_path):
  """2 processes x 2 devices against this process's one device."""
  out = tmp_path / 'steps.npz'
  _script(MODE_STEPS, tmp_path, 'steps', out, devices=2)
  got = dict(np.load(out))
  want = mode_steps(jax.sharding.Mesh(jax.devices()[:1], ('data',)))
  assert got.keys() == want.keys()
  for dtype in ('float32', 'bfloat16'):
    assert [got[f'{dtype}/{c}/bucket'] for c in (0, 1, 5)] == [0, 2, 8]
    assert got[f'{dtype}/5/distraction'] > 0 == got[f'{dtype}/0/distraction']
  for key in want:
    # Ld and its maps are float32 in both models: equal to float rounding.
    # The bfloat16 model's cross-entropy gradient is summed over 4 devices
    # in bfloat16: one device rounds it otherwise.
    loose = key.startswith('bfloat16/') and not key.endswith('/distraction')
    np.testing.assert_allclose(got[key], want[key],
                               rtol=2e-2 if loose else 1e-5,
                               atol=2e-2 if loose else 1e-6, err_msg=key)


@pytest.fixture(scope='module')
def one_host(trained):
  """A copy of the finished pod job, as one host sees it afterwards."""
  single = trained['tmp'] / 'one_host'
  shutil.copytree(trained['pod'], single)
  return single


@pytest.fixture(scope='module')
def one_host_run(one_host):
  """Its best model, loaded in this process (one device)."""
  return trained_run.load(str(one_host), 'best')


def _command(trained, module, *flags):
  """A command as 2 processes x 2 devices; returns both logs."""
  argv = [sys.executable, '-m', f'danil_jax.{module}',
          f"--workdir={trained['pod']}", '--checkpoint=best', *flags]
  return _finish(_start_job(argv, trained['tmp'], module, processes=2,
                            devices=2), trained['tmp'], module)


def test_evaluate_on_two_processes(trained, one_host):
  pod = trained['pod']
  logs = _command(trained, 'evaluate')
  assert 'test metrics of the best model' in logs[0]
  assert 'test metrics' not in logs[1]  # process 0 alone prints and writes
  got = json.load(open(pod / 'eval' / 'test_best' / 'metrics.json'))
  final = json.load(open(pod / 'final_metrics.json'))['best']
  assert got['step'] == final['step'] and got['model'] == 'best'
  _assert_same_metrics(got, final, rtol=1e-6)  # the trainer's 4 devices
  rows = _read_csv(pod / 'eval' / 'test_best' / 'predictions.csv')
  by_trainer = _read_csv(pod / 'eval_by_trainer' / 'test_best' /
                         'predictions.csv')
  assert [r['id'] for r in rows] == [r['id'] for r in by_trainer]
  assert len(rows) == 800
  for row, want in zip(rows, by_trainer):
    assert row == want
  # One host of the finished job, one process: the same numbers.
  _, single = trained_run.evaluate_run(str(one_host), 'test', 'best')
  _assert_same_metrics(single, got, rtol=1e-5)


def _images_with_a_broken_one(run, folder):
  """30 test images and a broken file (sorted last): process 0 reads the
  first 24 of the batch of 48, process 1 the rest, the broken file
  included."""
  folder.mkdir()
  source = run.builder.as_data_source('test')
  for i in range(30):
    Image.fromarray(source[i]['image']).save(folder / f'img{i:02d}.png')
  (folder / 'z_broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  return folder


def test_predict_on_two_processes(trained, one_host_run, tmp_path):
  run = one_host_run
  images = _images_with_a_broken_one(run, tmp_path / 'images')
  out = tmp_path / 'preds.csv'
  logs = _command(trained, 'predict', f'--images={images}', f'--out={out}',
                  '--skip_bad')
  assert 'z_broken.jpg' in logs[1] and 'z_broken.jpg' not in logs[0]
  assert 'wrote 30 rows' in logs[0] and '1 unreadable file(s)' in logs[0]
  rows = _read_csv(out)
  assert [os.path.basename(r['file']) for r in rows] == [
      f'img{i:02d}.png' for i in range(30)]
  # The pod job's own test predictions for these images (same devices) ...
  by_trainer = _read_csv(trained['pod'] / 'eval_by_trainer' / 'test_best' /
                         'predictions.csv')
  names = run.class_names
  for row, want in zip(rows, by_trainer):
    assert row['prediction'] == want['prediction']
    np.testing.assert_allclose([float(row[c]) for c in names],
                               [float(want[c]) for c in names], atol=1e-6)
  # ... and one process on one host.
  single, bad = trained_run.predict_files(
      run, trained_run.image_paths(str(images)), skip_bad=True)
  assert len(bad) == 1 and [p for p, _ in single] == [r['file'] for r in rows]
  for row, (_, probabilities) in zip(rows, single):
    np.testing.assert_allclose([float(row[c]) for c in names], probabilities,
                               atol=1e-5)


def test_response_maps_on_two_processes(trained, one_host_run):
  out = trained['tmp'] / 'maps.png'
  logs = _command(trained, 'response_maps', '--num=3', f'--out={out}')
  assert 'wrote' in logs[0] and 'wrote' not in logs[1]
  assert out.stat().st_size > 0
  got = np.load(trained['tmp'] / 'maps.npz')
  want = trained_run.compute_maps(one_host_run, 'test', 3)
  assert sorted(got.files) == sorted(want)
  assert list(got['indices']) == [0, 400, 799]
  for key in ('indices', 'labels', 'images', 'y_minus', 'prediction'):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  for key in ('a_plus', 'a_minus', 'distance', 'logits'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6,
                               err_msg=key)


def test_hosts_that_list_other_images_end_with_a_message(trained, tmp_path):
  """Hosts whose --images differ (no shared disk) would score and write
  mismatched slices: every host ends, non-zero, with one message naming the
  difference, decided together before any collective."""
  for name, count in (('two_images', 2), ('one_image', 1)):
    (tmp_path / name).mkdir()
    for i in range(count):
      Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
          tmp_path / name / f'{i}.png')
  argv = [sys.executable, '-m', 'danil_jax.predict',
          f"--workdir={trained['pod']}", f'--out={tmp_path / "never.csv"}']
  processes = jobs.start_two(
      argv + [f"--images={tmp_path / 'two_images'}"], tmp_path, 'disagree',
      argv_1=argv + [f"--images={tmp_path / 'one_image'}"])
  codes = jobs.finish(processes)
  logs = [jobs.read_log(tmp_path / f'disagree_{p}.log') for p in range(2)]
  assert codes == [1, 1], logs
  for log in logs:
    assert re.search(
        r'error: the list of --images files \(count, digest\) differs between '
        r'the hosts: process 0 has \[2, \'\w+\'\], process 1 has \[1, '
        r'\'\w+\'\]', log), log[-3000:]
  assert not (tmp_path / 'never.csv').exists()


def test_a_file_one_host_cannot_read_ends_every_host_with_its_name(
    trained, one_host_run, tmp_path):
  """Process 1 fails on its share of the files while process 0 goes on into
  the eval step's collective: both print process 1's message."""
  images = _images_with_a_broken_one(one_host_run, tmp_path / 'images')
  argv = [sys.executable, '-m', 'danil_jax.predict',
          f"--workdir={trained['pod']}", f'--images={images}',
          f'--out={tmp_path / "never.csv"}']
  processes = jobs.start_two(argv, tmp_path, 'unreadable')
  codes = jobs.finish(processes)
  logs = [jobs.read_log(tmp_path / f'unreadable_{p}.log') for p in range(2)]
  assert codes == [1, 1], logs
  for log in logs:
    assert ('error: process 1 of 2 failed: 1 unreadable file(s) '
            '(--skip_bad leaves them out):') in log, log[-3000:]
    assert 'z_broken.jpg' in log
  assert not (tmp_path / 'never.csv').exists()
