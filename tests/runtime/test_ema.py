"""The weight EMA (danil_jax/runtime/ema.py) against a numpy EMA of the weights.

The reference is the recursion written out in float64 over the weight
trajectory the steps (or the trainer's checkpoints) produced:
e_0 = w_0, e_{t+1} = d_t e_t + (1 - d_t) w_{t+1}, d_t = min(d, (1+t)/(10+t)).
Resuming keeps the average bit for bit: tests/runtime/test_faults.py kills a run
with it and compares the rerun's final checkpoint, average included.
"""

import json
import os
import subprocess
import sys

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from danil_jax.configs import demo
from danil_jax import models
from danil_jax.evaluation import trained_run
from danil_jax.models import layers
from danil_jax.runtime import augment
from danil_jax.runtime import checkpointing
from danil_jax.runtime import ema
from danil_jax.trainer import train
from danil_jax import data_prep
from danil_jax.trainer import config_checks
from danil_jax.trainer import train_step
from tests.runtime import test_faults

if not flags.FLAGS.is_parsed():  # grain reads absl flags
  flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))


def numpy_decay(decay, t):
  return min(decay, (1 + t) / (10 + t))


def numpy_ema(average, new, decay, t):
  d = numpy_decay(decay, t)
  return jax.tree.map(lambda e, w: d * np.float64(e) + (1 - d) * np.float64(w),
                      average, new)


def assert_tree_close(got, want, **kw):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), w, **kw)


# ------------------------------------------------------------ the step --


class _Net(nn.Module):
  """Conv, BatchNorm and a head: parameters and statistics to average."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.relu(layers.batch_norm(train, name='bn')(
        layers.conv(8, 3, 2, 1, name='conv')(x)))
    return nn.Dense(4, name='fc')(layers.global_avg_pool(x))


def _state(with_ema):
  model = _Net()
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 3)),
                         train=False)
  return train_step.create_train_state(model, variables,
                                  optax.sgd(0.1, momentum=0.9),
                                  jax.random.PRNGKey(2), ema=with_ema)


def _batch(i, poison=False):
  image = jax.random.normal(jax.random.PRNGKey(10 + i), (8, 16, 16, 3))
  if poison:
    image = image.at[0, 0, 0, 0].set(jnp.nan)
  return dict(image=image, label=jnp.arange(8, dtype=jnp.int32) % 4)


def _weights(state):
  return jax.device_get(ema.weights(state.params, state.batch_stats))


# 0.2: the warm-up (0.1, 0.18) for two steps, then the cap; 0.999: only the
# warm-up in these steps.
@pytest.mark.parametrize('decay', [0.2, 0.999])
def test_step_average_is_the_numpy_ema_of_the_weights(decay):
  state, plain = _state(True), _state(False)
  step = jax.jit(train_step.step_for('base', ema_decay=decay))
  plain_step = jax.jit(train_step.step_for('base'))
  want = _weights(state)  # e_0: the initial weights
  for t in range(5):
    state, metrics = step(state, _batch(t))
    plain, _ = plain_step(plain, _batch(t))
    assert float(metrics['nonfinite']) == 0.0
    want = numpy_ema(want, _weights(state), decay, t)
    assert_tree_close(state.ema, want, rtol=1e-6, atol=1e-7)
    # The average only watches: the raw weights are those of the same steps
    # without it, bit for bit.
    for got, ref in zip(jax.tree.leaves(_weights(state)),
                        jax.tree.leaves(_weights(plain))):
      np.testing.assert_array_equal(got, ref)


def test_a_refused_non_finite_step_leaves_the_average_as_it_was():
  step = jax.jit(train_step.step_for('base', ema_decay=0.5))
  state, _ = step(_state(True), _batch(0))
  new, metrics = step(state, _batch(1, poison=True))
  assert float(metrics['nonfinite']) == 1.0
  for got, want in zip(jax.tree.leaves(new.ema), jax.tree.leaves(state.ema)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_off_keeps_no_average_and_saves_what_it_saved_before():
  state = _state(False)
  assert state.ema is None and 'ema' not in train_step.state_to_checkpoint(state)
  with pytest.raises(ValueError, match='needs a state with a weight EMA'):
    train_step.step_for('base', ema_decay=0.9)(state, _batch(0))


# ------------------------------------------------------- checkpoints --


def test_checkpoints_with_and_without_an_average_restore_both_ways(
    tmp_path, capsys):
  with_ema, without = _state(True), _state(False)
  with_ema, _ = jax.jit(train_step.step_for(
      'base', ema_decay=0.5))(with_ema, _batch(0))
  for name, state in (('plain', without), ('ema', with_ema)):
    manager = checkpointing.make_manager(tmp_path / name, max_to_keep=1)
    checkpointing.save(manager, 1, train_step.state_to_checkpoint(state))
    manager.wait_until_finished()
  # An old checkpoint (no average) into a run with one: not "unreadable";
  # the average starts from its weights.
  manager = checkpointing.make_manager(tmp_path / 'plain', max_to_keep=1)
  restored = checkpointing.restore_latest(
      manager, train_step.state_to_checkpoint(with_ema))
  assert 'holds no weight EMA' in capsys.readouterr().err
  assert not (tmp_path / 'plain' / 'checkpoints.unreadable').exists()
  assert manager.all_steps() == [1]
  assert_tree_close(restored['ema'], _weights(without), rtol=0, atol=0)
  assert_tree_close(restored['params'], jax.device_get(without.params),
                    rtol=0, atol=0)
  # A checkpoint with an average into a run without: the rest restored.
  manager = checkpointing.make_manager(tmp_path / 'ema', max_to_keep=1)
  restored = checkpointing.restore_latest(
      manager, train_step.state_to_checkpoint(without))
  assert 'ema' not in restored
  assert_tree_close(restored['params'], jax.device_get(with_ema.params),
                    rtol=0, atol=0)


@pytest.mark.parametrize('key, value, message', [
    ('optim.ema_decay', 1.0, r'ema_decay must be a number in \[0, 1\)'),
    ('optim.ema_decay', -0.1, r'ema_decay must be a number in \[0, 1\)'),
    ('optim.ema_decay', True, r'ema_decay must be a number in \[0, 1\)'),
    ('eval.use_ema', None, r'use_ema must be True or False'),
])
def test_bad_ema_values_are_named(key, value, message):
  config = demo.get_config()
  section, leaf = key.split('.')
  config[section][leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config)


# ------------------------------------------------------------ the run --

DECAY = 0.3  # the warm-up for steps 0-2, the cap from step 3 on
VAL, TEST = 'test[:50]', 'test'


def make_config(data_dir, **overrides):
  """test_faults' tiny run (64 images, 2 epochs of 4 steps), Base, a
  checkpoint every step, selecting on VAL."""
  return test_faults.make_config(data_dir, **{
      'dataset.eval_split': TEST, 'eval.validation_split': VAL,
      'checkpoint_every_steps': 1, 'keep_checkpoints': 10, 'method': 'base',
      'log_every_steps': 4, **overrides})


def checkpoint(workdir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return str(demo_data_dir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  """The same 8-step run with and without an average."""
  dirs = {}
  for name, decay in (('ema', DECAY), ('plain', 0.0)):
    dirs[name] = str(tmp_path_factory.mktemp(name))
    train.train_and_evaluate(
        make_config(data_dir, **{'optim.ema_decay': decay}), dirs[name])
  return dirs


def test_checkpointed_average_is_the_numpy_ema_of_the_saved_weights(runs):
  saved = [checkpoint(runs['ema'], s) for s in range(1, 9)]
  want = saved[0]['ema']
  for t in range(1, 8):  # checkpoint t + 1 holds the weights after step t
    want = numpy_ema(want, ema.weights(saved[t]['params'],
                                       saved[t]['batch_stats']), DECAY, t)
    assert_tree_close(saved[t]['ema'], want, rtol=1e-6, atol=1e-7)
  # The average changes nothing of the training itself.
  plain = checkpoint(runs['plain'], 8)
  assert 'ema' not in plain
  for key in ('params', 'batch_stats', 'opt_state'):
    for got, ref in zip(jax.tree.leaves(saved[-1][key]),
                        jax.tree.leaves(plain[key])):
      np.testing.assert_array_equal(got, ref)


def _loss_and_predictions(data_dir, weights, split):
  """Cross-entropy, predictions and labels of `weights` on `split`, written out:
  the model applied to the evaluation preprocessing of each image."""
  info = models.info('small_resnet')
  source = data_prep.prepare('danil_demo', data_dir=data_dir).as_data_source(
      split)
  records = [source[i] for i in range(len(source))]
  images = np.stack([augment.eval_transform(r['image'], size=32,
                                            mean=info.mean, std=info.std)
                     for r in records])
  labels = np.array([r['label'] for r in records])
  logits = np.asarray(models.create('small_resnet', 4).apply(
      weights, images, train=False), np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  return (-log_p[np.arange(len(labels)), labels].mean(), logits.argmax(-1),
          labels)


def test_each_epoch_scores_and_selects_by_the_average(runs, data_dir):
  with open(os.path.join(runs['ema'], 'metrics.jsonl')) as f:
    evals = [json.loads(line) for line in f if '"eval"' in line]
  assert [r['step'] for r in evals] == [4, 8]
  for record in evals:
    saved = checkpoint(runs['ema'], record['step'])
    loss, _, _ = _loss_and_predictions(data_dir, saved['ema'], VAL)
    raw_loss, _, _ = _loss_and_predictions(
        data_dir, ema.weights(saved['params'], saved['batch_stats']), VAL)
    assert abs(loss - raw_loss) > 1e-4  # the two are told apart
    np.testing.assert_allclose(record['loss'], loss, rtol=1e-5)
  with open(os.path.join(runs['ema'], 'final_metrics.json')) as f:
    final = json.load(f)
  assert final['best']['weights'] == 'ema'
  assert final['best']['selection_value'] == max(r['macro_f1'] for r in evals)


def test_report_and_evaluate_name_and_use_the_weights(runs, data_dir):
  with open(os.path.join(runs['ema'], 'final_metrics.json')) as f:
    final = json.load(f)
  with open(os.path.join(runs['plain'], 'final_metrics.json')) as f:
    plain = json.load(f)
  assert final['weights'] == 'ema' and final['last_raw']['weights'] == 'raw'
  assert plain['weights'] == 'raw' and 'last_raw' not in plain
  # The raw weights are the plain run's: so are their scores.
  assert final['last_raw']['loss'] == plain['loss']
  saved = checkpoint(runs['ema'], 8)
  loss, predictions, labels = _loss_and_predictions(data_dir, saved['ema'],
                                                    TEST)
  np.testing.assert_allclose(final['loss'], loss, rtol=1e-5)
  confusion = np.zeros((4, 4), int)
  np.add.at(confusion, (labels, predictions), 1)
  assert final['confusion_matrix'] == confusion.tolist()

  outdir, metrics = trained_run.evaluate_run(runs['ema'], TEST, 'last')
  assert outdir.endswith(f'{TEST}_last') and metrics['weights'] == 'ema'
  assert metrics['loss'] == final['loss']
  outdir, metrics = trained_run.evaluate_run(runs['ema'], TEST, 'last', 'raw')
  assert outdir.endswith(f'{TEST}_last_raw') and metrics['weights'] == 'raw'
  assert metrics['loss'] == plain['loss']
  command = subprocess.run(
      [sys.executable, '-m', 'danil_jax.evaluate', f"--workdir={runs['plain']}",
       '--weights=ema'], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'), timeout=300)
  assert command.returncode == 1
  assert 'keeps no weight EMA' in command.stderr, command.stderr[-2000:]
  assert '--weights=raw' in command.stderr
