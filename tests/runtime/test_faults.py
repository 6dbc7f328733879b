"""Fault injection: kills, preemption, NaNs, changed configs, damaged files.

A tiny run (64 training images, 16 a batch: 4 steps an epoch, 2 epochs, a
checkpoint every 3 steps, 100 test images) under a constant schedule. Each
interrupted run is rerun to the end and its final checkpoint compared
bit for bit with that of one uninterrupted run. Kills happen at fixed points
from inside a subprocess (`_DRIVER`): during the computation of a step,
between writing a checkpoint's arrays and committing it, during an
evaluation.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from danil_jax.configs import demo
from danil_jax import models
from danil_jax.runtime import faults
from danil_jax.runtime import run_config
from danil_jax.trainer import config_checks
from danil_jax.trainer import train
from danil_jax.trainer import train_step

# grain's workers read absl flags, parsed by `app.run` in the commands.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))
TOTAL_STEPS = 8  # 2 epochs of 4 steps

OVERRIDES = {
    'dataset.train_split': 'train[:64]', 'dataset.eval_split': 'test[:100]',
    'input.global_batch_size': 16, 'input.eval_batch_size': 50,
    'optim.schedule': 'constant', 'num_epochs': 2, 'log_every_steps': 1,
    'checkpoint_every_steps': 3, 'keep_checkpoints': 2,
}


def make_config(data_dir, **overrides):
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  for key, value in {**OVERRIDES, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


# Runs the tiny config in a subprocess and kills it at a chosen point.
_DRIVER = r'''
import json, os, signal, sys, time
import jax
import orbax.checkpoint as ocp

def main():
  sys.path.insert(0, os.environ['REPO'])
  from tests.runtime import test_faults
  from danil_jax.runtime import faults
  from danil_jax.evaluation import scoring
  from danil_jax.trainer import train
  workdir, data_dir, point, at, overrides = sys.argv[1:6]
  at = int(at)
  config = test_faults.make_config(data_dir, **json.loads(overrides))
  sent = []

  def kill(signum):
    sent.append(signum)
    os.kill(os.getpid(), signum)

  if point in ('step', 'sigterm', 'sigterm_twice'):
    # Right after step `at` is dispatched, while it may still compute: a
    # host-side point, so the compiled step stays that of the reference run.
    signum = signal.SIGKILL if point == 'step' else signal.SIGTERM
    original_add = faults.NonFiniteMonitor.add
    def add(self, step, metrics):
      original_add(self, step, metrics)
      if step == at and not sent:
        kill(signum)
    faults.NonFiniteMonitor.add = add
  if point == 'step':
    # Each checkpoint committed before training goes on, so the kill point
    # (and the step the rerun resumes from) does not depend on how fast the
    # async save was on a loaded machine.
    from danil_jax.runtime import checkpointing
    original_checkpoint_save = checkpointing.save
    def save(manager, *args, **kw):
      original_checkpoint_save(manager, *args, **kw)
      manager.wait_until_finished()
    checkpointing.save = save
  if point in ('save', 'sigterm_twice'):
    # The arrays of a checkpoint are written, the checkpoint not committed.
    original_save = ocp.StandardCheckpointHandler.async_save
    async def async_save(self, directory, *args, **kw):
      futures = await original_save(self, directory, *args, **kw)
      path = getattr(directory, 'path', directory)  # maybe awaiting creation
      step = int(os.path.basename(os.path.dirname(str(path))).split('.')[0])
      if (point == 'save' and step == at) or (
          point == 'sigterm_twice' and sent):
        for f in futures or []:
          f.result()
        kill(signal.SIGKILL if point == 'save' else signal.SIGTERM)
        time.sleep(30)
      return futures
    ocp.StandardCheckpointHandler.async_save = async_save
  if point == 'eval':
    # During the `at`-th evaluation batch of the run.
    original_eval = scoring.eval_step
    calls = []
    def eval_step(state, batch):
      def count(_):
        calls.append(1)
        if len(calls) == at:
          kill(signal.SIGKILL)
      jax.debug.callback(count, state.step)
      return original_eval(state, batch)
    scoring.eval_step = eval_step
  train.train_and_evaluate(config, workdir)

if __name__ == '__main__':
  main()
'''


def run_driver(tmp_path, workdir, data_dir, point, at, **overrides):
  script = tmp_path / 'driver.py'
  script.write_text(_DRIVER)
  env = dict(os.environ, REPO=REPO, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  # Files, not pipes: orphaned grain workers of a killed run would hold a
  # pipe open.
  with open(tmp_path / 'stdout', 'w') as out, open(tmp_path / 'stderr',
                                                   'w') as err:
    process = subprocess.Popen(
        [sys.executable, str(script), str(workdir), data_dir, point, str(at),
         json.dumps(overrides)], cwd=REPO, env=env, stdout=out, stderr=err,
        start_new_session=True)
    try:
      returncode = process.wait(timeout=600)
    finally:
      # The grain workers of a killed run outlive it: end its whole session.
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  return subprocess.CompletedProcess(
      process.args, returncode, stdout=(tmp_path / 'stdout').read_text(),
      stderr=(tmp_path / 'stderr').read_text())


def checkpoint_arrays(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  tree = ocp.StandardCheckpointer().restore(path)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_checkpoint(workdir, reference, step=TOTAL_STEPS):
  got, want = checkpoint_arrays(workdir, step), checkpoint_arrays(reference,
                                                                  step)
  assert got.keys() == want.keys()
  different = [k for k in want if not np.array_equal(got[k], want[k])]
  assert not different, f'differ from the uninterrupted run: {different[:5]}'


def saved_steps(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir,
                                                        'checkpoints'))
                if p.isdigit())


def train_steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f
            if json.loads(line)['kind'] == 'train']


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return str(demo_data_dir)


def _finished_run(shared_dir, name, data_dir, **overrides):
  """The workdir of make_config(data_dir, **overrides) run to its end, one
  for the whole suite (read it only)."""
  return str(shared_dir(f'test_faults_{name}', lambda path: (
      train.train_and_evaluate(make_config(data_dir, **overrides),
                               str(path)))))


@pytest.fixture(scope='module')
def reference(shared_dir, data_dir):
  """The uninterrupted run's workdir."""
  workdir = _finished_run(shared_dir, 'reference', data_dir)
  assert saved_steps(workdir) == [6, 8]
  return workdir


@pytest.fixture(scope='module')
def reference_ema(shared_dir, data_dir):
  """The uninterrupted run's workdir, with a weight EMA."""
  return _finished_run(shared_dir, 'reference_ema', data_dir, **EMA)


# A decay the warm-up caps from step 3 on; the average is checkpointed with
# the weights and must resume bit for bit too (tests/runtime/test_ema.py).
EMA = {'optim.ema_decay': 0.3}


@pytest.fixture(scope='module')
def first_epoch(shared_dir, data_dir):
  """A finished 1-epoch run (checkpoints 3 and 4), to rerun for longer."""
  workdir = _finished_run(shared_dir, 'first_epoch', data_dir, num_epochs=1)
  assert saved_steps(workdir) == [3, 4]
  return workdir


# ------------------------------------------------------------ kill, rerun


@pytest.mark.parametrize('point, at, num_workers, resumed_from, ema', [
    ('step', 6, 0, 4, False),  # killed computing step 6
    ('save', 6, 1, 4, False),  # killed between writing and committing ckpt 6
    ('eval', 2, 1, 3, False),  # killed in the first evaluation, at step 4
    ('step', 6, 0, 4, True),  # the same kill with a weight EMA
])
def test_sigkill_then_rerun_gives_the_uninterrupted_checkpoint(
    tmp_path, data_dir, request, point, at, num_workers, resumed_from, ema):
  overrides = {'input.num_workers': num_workers, **(EMA if ema else {})}
  workdir = tmp_path / 'run'
  killed = run_driver(tmp_path, workdir, data_dir, point, at, **overrides)
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert max(saved_steps(workdir)) == resumed_from
  train.train_and_evaluate(make_config(data_dir, **overrides), str(workdir))
  reference = request.getfixturevalue('reference_ema' if ema else 'reference')
  assert_same_checkpoint(workdir, reference)
  assert any(k.startswith("['ema']") for k in checkpoint_arrays(
      workdir, TOTAL_STEPS)) == ema
  assert train_steps(workdir) == list(range(1, TOTAL_STEPS + 1))


def test_sigterm_saves_the_current_step_exits_75_and_the_rerun_resumes(
    tmp_path, data_dir, reference, capsys):
  workdir = tmp_path / 'run'
  stopped = run_driver(tmp_path, workdir, data_dir, 'sigterm', 2,
                       **{'input.num_workers': 1})
  assert stopped.returncode == faults.EXIT_PREEMPTED == 75, (
      stopped.stderr[-3000:])
  step = int(re.search(r'stopped after step (\d+)', stopped.stdout)[1])
  assert step == 2  # the signal came during step 2: no later step ran
  assert saved_steps(workdir) == [step]
  assert 'Rerun the same command' in stopped.stdout
  assert max(train_steps(workdir)) == step
  train.train_and_evaluate(
      make_config(data_dir, **{'input.num_workers': 1}), str(workdir))
  assert f'Resuming from step {step}' in capsys.readouterr().out
  assert_same_checkpoint(workdir, reference)


def test_second_sigterm_during_the_save_exits_at_once_and_corrupts_nothing(
    tmp_path, data_dir, reference):
  workdir = tmp_path / 'run'
  killed = run_driver(tmp_path, workdir, data_dir, 'sigterm_twice', 5)
  assert killed.returncode == -15, killed.stderr[-3000:]
  assert 'SIGTERM again: exiting now' in killed.stderr
  # The preemption save at step 5 was cut short: 4 is still the latest.
  assert saved_steps(workdir) == [3, 4]
  train.train_and_evaluate(make_config(data_dir), str(workdir))
  assert_same_checkpoint(workdir, reference)


# -------------------------------------------------------------- non-finite


def poison_step(monkeypatch, nan_steps):
  """Makes the images of the given steps (1-based) NaN, inside the step."""
  original = train_step.make_train_step

  def make_train_step(config):
    step = original(config)

    def poisoned_step(state, batch):
      poisoned = jnp.isin(state.step + 1, jnp.asarray(nan_steps))
      image = jnp.where(poisoned, jnp.nan, batch['image'])
      return step(state, dict(batch, image=image))

    return poisoned_step

  monkeypatch.setattr(train_step, 'make_train_step', make_train_step)


def assert_all_checkpoints_finite(workdir):
  for step in saved_steps(workdir):
    for key, value in checkpoint_arrays(workdir, step).items():
      if np.issubdtype(value.dtype, np.inexact):
        assert np.all(np.isfinite(value)), (step, key)


def test_a_nan_stops_the_run_naming_step_metric_and_last_checkpoint(
    tmp_path, data_dir, monkeypatch):
  poison_step(monkeypatch, [5])
  with pytest.raises(faults.NonFiniteError) as error:
    train.train_and_evaluate(make_config(data_dir), str(tmp_path))
  message = str(error.value)
  assert message.startswith('step 5: the loss is nan')
  assert os.path.join(str(tmp_path), 'checkpoints', '4') in message
  assert saved_steps(tmp_path) == [3, 4]
  assert_all_checkpoints_finite(tmp_path)


def test_nan_steps_are_skipped_and_counted_below_the_limit(
    tmp_path, data_dir, monkeypatch, capsys):
  poison_step(monkeypatch, [2, 5, 6])
  train.train_and_evaluate(
      make_config(data_dir, **{'faults.max_nonfinite_in_a_row': 3}),
      str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    log = [json.loads(line) for line in f]
  flags = {r['step']: r['nonfinite'] for r in log if r['kind'] == 'train'}
  assert flags == {1: 0, 2: 1, 3: 0, 4: 0, 5: 1, 6: 1, 7: 0, 8: 0}
  assert_all_checkpoints_finite(tmp_path)
  err = capsys.readouterr().err
  for step in (2, 5, 6):
    assert f'step {step}: the loss is nan; update skipped' in err


def tiny_state(learning_rate):
  model = models.create('small_resnet', 4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                         train=False)
  config = demo.get_config()
  config.optim.learning_rate = learning_rate
  config.optim.schedule = 'constant'
  tx = train_step.make_optimizer(config.optim, 10, 1)
  return train_step.create_train_state(model, variables, tx, jax.random.key(1))


def tiny_batch(image_value=None):
  image = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  if image_value is not None:
    image = image.at[0, 0, 0, 0].set(image_value)
  return dict(image=image, label=jnp.array([0, 1, 2, 3]))


@pytest.mark.parametrize('learning_rate, image_value, steps_before', [
    (0.05, np.nan, 0),  # a poisoned batch: NaN loss and gradients
    (0.05, np.inf, 0),
    # An absurd learning rate: the first update is huge but finite, the
    # second step's loss overflows.
    (1e30, None, 1),
])
def test_train_step_keeps_the_old_state_on_a_non_finite_step(
    learning_rate, image_value, steps_before):
  state = tiny_state(learning_rate)
  step = jax.jit(train_step.step_for('danil', reduction='per_image'))
  for _ in range(steps_before):
    state, metrics = step(state, tiny_batch())
    assert float(metrics['nonfinite']) == 0.0
  new_state, metrics = step(state, tiny_batch(image_value))
  assert float(metrics['nonfinite']) == 1.0
  assert int(new_state.step) == int(state.step) + 1
  for name in ('params', 'opt_state', 'batch_stats'):
    for old, new in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(new_state, name))):
      np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_train_step_refuses_an_update_that_overflows_the_parameters():
  # Loss and gradient finite, the updated weights not (an infinite rate):
  # only the check of the new parameters can refuse this step.
  state = tiny_state(0.05)
  tx = optax.sgd(float('inf'))
  state = state.replace(tx=tx, opt_state=tx.init(state.params))
  new_state, metrics = jax.jit(train_step.step_for('base'))(state,
                                                            tiny_batch())
  assert np.isfinite(float(metrics['loss']))
  assert np.isfinite(float(metrics['grad_norm']))
  assert float(metrics['nonfinite']) == 1.0
  for old, new in zip(jax.tree.leaves(state.params),
                      jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize('leaf, poison', [(None, None)] + [
    (leaf, poison) for leaf in ('float32', 'bfloat16')
    for poison in (np.nan, np.inf, -np.inf)])
def test_all_finite_agrees_with_numpy(leaf, poison):
  tree = dict(float32=np.arange(6, dtype=np.float32).reshape(2, 3),
              bfloat16=np.ones(4, jnp.bfloat16), count=np.int32(3),
              empty=np.zeros((0, 2), np.float32))
  if leaf is not None:
    tree[leaf] = tree[leaf].copy()
    tree[leaf].flat[1] = poison
  expected = all(np.isfinite(np.asarray(x, np.float32)).all()
                 for x in jax.tree.leaves(tree))
  assert bool(jax.jit(train_step._all_finite)(tree)) == expected


def test_train_step_applies_a_finite_step():
  state = tiny_state(0.05)
  new_state, metrics = jax.jit(train_step.step_for(
      'danil', reduction='per_image'))(state, tiny_batch())
  assert float(metrics['nonfinite']) == 0.0
  assert not np.array_equal(
      np.asarray(jax.tree.leaves(new_state.params)[0]),
      np.asarray(jax.tree.leaves(state.params)[0]))


# ---------------------------------------------------------- config pinning


def test_rerun_with_another_method_is_refused_showing_both_values(
    tmp_path, data_dir, first_epoch):
  workdir = tmp_path / 'run'
  shutil.copytree(first_epoch, workdir)
  with pytest.raises(run_config.ConfigChanged) as error:
    train.train_and_evaluate(
        make_config(data_dir, method='base', **{'optim.learning_rate': 0.1}),
        str(workdir))
  message = str(error.value)
  assert "method: 'danil' -> 'base'" in message
  assert 'optim.learning_rate: 0.05 -> 0.1' in message
  assert 'allow_config_change=True' in message
  assert saved_steps(workdir) == [3, 4]  # nothing ran


def test_longer_num_epochs_continues_the_run(tmp_path, data_dir, first_epoch,
                                             reference):
  workdir = tmp_path / 'run'
  shutil.copytree(first_epoch, workdir)
  train.train_and_evaluate(make_config(data_dir), str(workdir))
  assert train_steps(workdir) == list(range(1, TOTAL_STEPS + 1))
  # Under a constant schedule a 1-epoch run extended to 2 is the 2-epoch run.
  assert_same_checkpoint(workdir, reference)


def test_allow_config_change_overrides_and_repins(tmp_path, data_dir,
                                                  first_epoch):
  workdir = tmp_path / 'run'
  shutil.copytree(first_epoch, workdir)
  config = make_config(data_dir, **{'danil.lam': 1e-4,
                                    'faults.allow_config_change': True})
  run_config.pin(config, str(workdir))
  with open(workdir / 'config.json') as f:
    assert json.load(f)['danil']['lam'] == 1e-4
  assert [p for p in os.listdir(workdir) if p.startswith('config.json.')]


def test_config_differences_sort_keys_by_kind():
  old = {'method': 'danil', 'num_epochs': 2, 'input': {'num_workers': 0,
         'global_batch_size': 16}, 'optim': {'schedule': 'constant'},
         'removed': 1}
  new = {'method': 'danil', 'num_epochs': 5, 'input': {'num_workers': 4,
         'global_batch_size': 32}, 'optim': {'schedule': 'constant'},
         'eval': {'every_epochs': 1}}
  changing, observing, one_sided = run_config.differences(old, new)
  # The data order does not depend on the number of grain workers.
  assert changing == [('input.global_batch_size', 16, 32)]
  assert sorted(observing) == [('input.num_workers', 0, 4),
                              ('num_epochs', 2, 5)]
  assert [k for k, _, _ in one_sided] == ['eval.every_epochs', 'removed']
  # The cosine schedule spans num_epochs: changing it changes the result.
  old['optim']['schedule'] = new['optim']['schedule'] = 'cosine'
  changing, _, _ = run_config.differences(old, new)
  assert ('num_epochs', 2, 5) in changing


# ------------------------------------------------------ torn, damaged files


def test_truncated_last_metrics_line_is_dropped_and_the_run_resumes(
    tmp_path, data_dir, first_epoch):
  workdir = tmp_path / 'run'
  shutil.copytree(first_epoch, workdir)
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"kind": "train", "step": 5, "loss": 1.2')  # cut short
  train.train_and_evaluate(make_config(data_dir), str(workdir))
  assert train_steps(workdir) == list(range(1, TOTAL_STEPS + 1))


def test_metrics_log_drops_only_a_torn_last_line(tmp_path):
  from danil_jax.runtime import run_log
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
                  '{"step": 3, "lo')
  log = run_log.MetricsLog(str(tmp_path))
  assert log.read() == [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.5}]
  log.truncate_after(2)
  log.write({'step': 3, 'loss': 1.0})
  assert path.read_text().splitlines() == [
      '{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}',
      '{"step": 3, "loss": 1.0}']
  # A damaged line followed by whole ones is not a torn write: an error.
  path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.5}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 1: not a JSON'):
    log.read()


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, data_dir, first_epoch, reference, capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(first_epoch, workdir)
  state_dir = workdir / 'checkpoints' / '4' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != 'commit_success.txt':
        path = os.path.join(root, name)
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  train.train_and_evaluate(make_config(data_dir), str(workdir))
  err = capsys.readouterr().err
  assert re.search(r'checkpoint \S+/checkpoints/4 cannot be read .*resuming '
                   r'from \S+/checkpoints/3', err), err[-2000:]
  assert os.listdir(str(workdir / 'checkpoints.unreadable'))
  assert_same_checkpoint(workdir, reference)


# -------------------------------------------------------- bad config values


@pytest.mark.parametrize('overrides, message', [
    ({'input.global_batch_size': 0},
     r'config.input.global_batch_size must be a positive integer, got 0'),
    ({'input.eval_batch_size': -8},
     r'config.input.eval_batch_size must be a positive integer, got -8'),
    ({'optim.learning_rate': 0.0},
     r'config.optim.learning_rate must be a positive number, got 0.0'),
    ({'optim.learning_rate': -0.1},
     r'config.optim.learning_rate must be a positive number, got -0.1'),
    ({'num_epochs': 0}, r'config.num_epochs must be a positive integer, got 0'),
    ({'method': 'danill'},
     r"config.method must be one of \['base', 'ohem', 'danil'\], got 'danill'"),
    ({'model.name': 'resnet5O'},
     r"config.model.name must be one of \[.*'resnet50'.*\], got 'resnet5O'"),
    ({'model.name': 'inception_v4', 'dataset.image_size': 64},
     r'image_size 64 is below the smallest input inception_v4 accepts, 75'),
    ({'model.name': 'vgg11', 'dataset.image_size': 31},
     r'image_size 31 is below the smallest input vgg11 accepts, 32'),
    ({'faults.max_nonfinite_in_a_row': 0},
     r'config.faults.max_nonfinite_in_a_row must be a positive integer'),
    ({'dataset.num_classes': -1},  # 0 takes the data set's
     r'config.dataset.num_classes must be a positive integer, got -1'),
])
def test_bad_config_values_are_named_before_any_work(tmp_path, data_dir,
                                                     overrides, message):
  with pytest.raises(config_checks.ConfigError, match=message):
    train.train_and_evaluate(make_config(data_dir, **overrides),
                             str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # checked before anything


def test_a_split_the_data_set_lacks_is_named_with_the_splits_it_has(
    tmp_path, data_dir):
  with pytest.raises(config_checks.ConfigError,
                     match=r"train_split 'train\+validation' names split "
                     r"'validation'.*\['test', 'train'\]"):
    train.train_and_evaluate(
        make_config(data_dir, **{'dataset.train_split': 'train+validation'}),
        str(tmp_path))


def test_min_image_sizes_are_where_the_backbone_stops_working():
  # VGG's five 2x2 pools: below 32 a feature map is empty.
  model = models.create('vgg11', 4)
  init = lambda size: jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  init(config_checks.MIN_IMAGE_SIZE['vgg11'])
  with pytest.raises(Exception):
    init(config_checks.MIN_IMAGE_SIZE['vgg11'] - 1)


def test_split_names_of_tfds_expressions():
  assert config_checks.split_names('train[:80%]+validation') == [
      'train', 'validation']


def test_missing_or_damaged_pretrained_weights_are_named(tmp_path, data_dir):
  from danil_jax.models import weights
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(weights.ConversionError,
                     match='pretrained weights directory .*nowhere.* does not '
                     'exist'):
    train.train_and_evaluate(make_config(
        data_dir, **{'model.pretrained': missing}), str(tmp_path / 'run'))
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  (damaged / weights.METADATA_FILE).write_text(json.dumps(
      dict(arch='resnet50', num_classes=4, format_version=1)))
  (damaged / weights.VARIABLES_FILE).write_bytes(b'PK\x03\x04 cut short')
  with pytest.raises(weights.ConversionError,
                     match='variables.npz is missing or damaged'):
    weights.check('resnet50', str(damaged))
  (damaged / weights.METADATA_FILE).write_text('{"arch": "resn')
  with pytest.raises(weights.ConversionError,
                     match='metadata.json is damaged'):
    train.train_and_evaluate(make_config(
        data_dir, **{'model.pretrained': str(damaged),
                     'model.name': 'resnet50'}), str(tmp_path / 'run'))
