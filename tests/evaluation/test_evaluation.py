"""The evaluation loop, response maps, best checkpoint and TensorBoard events,
each against an independent computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from danil_jax.configs import default
from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import scoring
from danil_jax.method import intrinsic_maps
from danil_jax.runtime import augment
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import run_log
from danil_jax.trainer import train_step
from danil_jax import data_prep


class _Linear(nn.Module):
  """Logits linear in the pixels: probabilities easy to recompute in numpy."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(4, kernel_init=nn.initializers.normal(0.05))(
        x.reshape(x.shape[0], -1))


class _Conv(nn.Module):
  """A small non-linear model for the response maps."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = jnp.tanh(nn.Conv(5, (3, 3))(x))
    return nn.Dense(4)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope='module')
def demo_builder(tmp_path_factory):
  return data_prep.prepare('danil_demo',
                           data_dir=str(tmp_path_factory.mktemp('tfds')))


# --- The evaluation loop. --------------------------------------------------


def test_predict_split_and_report_against_numpy_and_sklearn(demo_builder):
  """50 examples in batches of 16 (the last one padded with 14): loss,
  probabilities, macro-F1, accuracy and per-class numbers as computed
  independently from the images."""
  split = 'test[:50]'
  source = demo_builder.as_data_source(split)
  pre = input_pipeline.Preprocessing(size=32, mean=(0.5, 0.4, 0.3),
                                     std=(0.2, 0.25, 0.3), augment=False)
  model = _Linear()
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
  state = train_step.create_train_state(model, variables, optax.sgd(0.1),
                                   jax.random.PRNGKey(0))
  mesh = multihost.make_mesh()
  predictions = scoring.predict_split(
      jax.jit(scoring.eval_step), state, source, pre=pre, global_batch_size=16,
      mesh=mesh, metadata=scoring.read_metadata(demo_builder, split))

  # Independently: every image preprocessed, the linear map in float64.
  images = np.stack([augment.eval_transform(source[i]['image'], size=32,
                                            mean=pre.mean, std=pre.std)
                     for i in range(50)]).reshape(50, -1).astype(np.float64)
  labels = np.array([source[i]['label'] for i in range(50)])
  dense = variables['params']['Dense_0']
  logits = images @ np.asarray(dense['kernel'], np.float64) + np.asarray(
      dense['bias'], np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  reference_predictions = logits.argmax(1)
  assert len(set(reference_predictions)) > 1  # the test can tell metrics apart

  np.testing.assert_array_equal(predictions.labels, labels)
  np.testing.assert_allclose(predictions.probabilities, np.exp(log_p),
                             atol=2e-6)
  np.testing.assert_allclose(predictions.log_probabilities, log_p, atol=2e-5)
  np.testing.assert_array_equal(predictions.metadata['index'], np.arange(50))
  np.testing.assert_array_equal(predictions.ids, np.arange(50))

  class_names = list(demo_builder.info.features['label'].names)
  report = scoring.report(predictions, class_names, default.get_config().eval)
  assert report['num_examples'] == 50
  assert report['loss'] == pytest.approx(
      -np.mean(log_p[np.arange(50), labels]), rel=1e-5)
  assert report['accuracy'] == pytest.approx(
      np.mean(reference_predictions == labels))
  assert report['brier'] == pytest.approx(
      np.mean(np.sum((np.exp(log_p) - np.eye(4)[labels]) ** 2, 1)), abs=1e-5)
  assert report['tta'] == 'none' and 'temperature' not in report
  assert report['macro_f1'] == pytest.approx(
      skm.f1_score(labels, reference_predictions, average='macro'))
  precision, recall, f1, _ = skm.precision_recall_fscore_support(
      labels, reference_predictions, labels=range(4), zero_division=0)
  for k, name in enumerate(class_names):
    assert report['per_class_f1'][name] == pytest.approx(f1[k])
    assert report['per_class_precision'][name] == pytest.approx(precision[k])
    assert report['per_class_recall'][name] == pytest.approx(recall[k])
    assert report['per_class_auroc'][name] == pytest.approx(
        skm.roc_auc_score(labels == k, np.exp(log_p)[:, k]), abs=1e-4)


def test_validation_split_auto():
  config = default.get_config()
  splits = ['train', 'validation', 'test']
  assert scoring.validation_split(config, splits) == ''  # paper protocol
  config.dataset.train_split = 'train'
  assert scoring.validation_split(config, splits) == 'validation'
  assert scoring.validation_split(config, ['train', 'test']) == ''
  config.eval.validation_split = ''
  assert scoring.validation_split(config, splits) == ''
  assert scoring.select_by(config) == 'macro_f1'
  config.eval.select_by = 'loss'
  assert scoring.select_by(config) == 'loss'


# --- Response maps (Eq. 2, Fig. 3). ------------------------------------------


@pytest.mark.parametrize('has_aux', [False, True])
def test_response_maps_equal_two_separate_grads(has_aux):
  model = _Conv()
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 3))
  params = model.init(jax.random.PRNGKey(1), x)
  logits = model.apply(params, x)
  predictions = np.asarray(logits.argmax(-1))
  # Labels: half right (the prediction), half wrong.
  labels = np.where(np.arange(6) % 2 == 0, predictions, (predictions + 1) % 4)

  def logits_fn(x):
    out = model.apply(params, x)
    return (out, {'unused': 0}) if has_aux else out

  maps = intrinsic_maps.response_maps(logits_fn, x, jnp.asarray(labels),
                                      has_aux=has_aux)
  @jax.jit
  def grad(xi, y):  # the reference: one jax.grad per image and class
    return jax.grad(lambda xi: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(params, xi[None]), y[None])[0])(xi)

  for i in range(6):
    order = np.argsort(-np.asarray(logits[i]))
    y_minus = order[1] if order[0] == labels[i] else order[0]
    if order[0] == labels[i]:
      assert y_minus != labels[i]  # the highest-scoring wrong class
    assert int(maps['y_minus'][i]) == y_minus
    a_plus = grad(x[i], jnp.int32(labels[i]))
    a_minus = grad(x[i], jnp.int32(y_minus))
    np.testing.assert_allclose(maps['a_plus'][i], a_plus, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(maps['a_minus'][i], a_minus, rtol=1e-5,
                               atol=1e-7)
    assert float(maps['distance'][i]) == pytest.approx(
        float(jnp.sum((a_plus - a_minus) ** 2)), rel=1e-5)


# --- Best checkpoint. --------------------------------------------------------


@pytest.mark.parametrize('metric,values,best', [
    ('macro_f1', [0.3, None, 0.5, 0.4, 0.5], (3, 0.5)),
    ('loss', [0.9, 0.5, 0.7], (2, 0.5)),
    ('patient_auroc', [None, None, 0.6], (3, 0.6)),
])
def test_best_checkpoint_keeps_the_best_across_restarts(tmp_path, metric,
                                                        values, best):
  for step, value in enumerate(values, start=1):
    # A new manager per epoch: the best so far must survive a restart.
    manager = best_checkpoint.make_manager(str(tmp_path), metric)
    best_checkpoint.maybe_save(manager, metric, step,
                               {'w': np.full(3, step, np.float32)}, value)
    manager.wait_until_finished()
    manager.close()
  manager = best_checkpoint.make_manager(str(tmp_path), metric)
  assert best_checkpoint.best_so_far(manager) == best
  manager.close()
  directory, step = best_checkpoint.find_checkpoint(str(tmp_path), 'best')
  assert step == best[0]
  restored = best_checkpoint.restore_state(
      directory, step, {'w': np.zeros(3, np.float32)})
  np.testing.assert_array_equal(restored['w'], np.full(3, best[0]))


def test_find_checkpoint_tells_best_from_last(tmp_path):
  (tmp_path / 'checkpoints' / '7').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '9').mkdir()
  # A save still in progress (orbax renames it to '11' once complete).
  (tmp_path / 'checkpoints' / '11.orbax-checkpoint-tmp-1').mkdir()
  (tmp_path / 'checkpoints_best' / '3').mkdir(parents=True)
  latest, best = str(tmp_path / 'checkpoints'), str(tmp_path /
                                                    'checkpoints_best')
  find = lambda which: best_checkpoint.find_checkpoint(str(tmp_path), which)
  assert find('best') == (best, 3)
  assert find('last') == (latest, 9)
  assert find('7') == (latest, 7) and find('3') == (best, 3)
  with pytest.raises(ValueError, match=r'no checkpoint of step 5.*\[7, 9\]'):
    find('5')


def test_find_checkpoint_errors_name_what_exists(tmp_path):
  with pytest.raises(ValueError, match='no best checkpoint'):
    best_checkpoint.find_checkpoint(str(tmp_path), 'best')
  with pytest.raises(ValueError, match="'best', 'last' or a step.*'soon'"):
    best_checkpoint.find_checkpoint(str(tmp_path), 'soon')


# --- TensorBoard. ------------------------------------------------------------


def _read_events(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir)
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()['scalars']}


def test_tensorboard_events_read_back_and_resume_purges(tmp_path):
  writer = run_log.ScalarWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(dict(kind='train', step=step, loss=1.0 / step, ce=0.5))
  writer.write(dict(kind='eval', step=4, split='validation', epoch=1.0,
                    macro_f1=0.25,
                    per_class_f1={'a': 0.5, 'b': None, 'No Finding': 0.75},
                    confusion_matrix=[[1, 2]], patient_auroc=None))
  writer.close()
  events = _read_events(str(tmp_path / 'tensorboard'))
  assert events['train/loss'] == [(s, pytest.approx(1.0 / s))
                                  for s in (1, 2, 3, 4)]
  assert events['validation/macro_f1'] == [(4, 0.25)]
  assert events['validation/per_class_f1/a'] == [(4, 0.5)]
  # A class name is the tag's last part as it is, spaces and all.
  assert events['validation/per_class_f1/No Finding'] == [(4, 0.75)]
  assert 'validation/patient_auroc' not in events
  assert 'validation/per_class_f1/b' not in events
  # Resumed from step 2: steps 3 and 4 are written again; TensorBoard shows
  # the new values only.
  writer = run_log.ScalarWriter(str(tmp_path), start_step=2)
  for step in (3, 4):
    writer.write(dict(kind='train', step=step, loss=10.0 * step, ce=0.5))
  writer.close()
  events = _read_events(str(tmp_path / 'tensorboard'))
  assert events['train/loss'] == [(1, 1.0), (2, 0.5), (3, 30.0), (4, 40.0)]
