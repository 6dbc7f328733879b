"""The map distance ||A+ - A-||^2 over a split, against an independent
computation: the plain-JAX twin of the model and two jax.grad calls per
image."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import plain_jax_models
import pytest

from danil_jax.evaluation import map_distance
from danil_jax.evaluation import scoring

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# A split of 10 random 16 px images scored in global batches of 4 (the last
# one padded) by a randomly initialised small ResNet whose BatchNorm running
# statistics are moved off (0, 1), so inference mode differs from training
# mode. Run here and, for the device counts, in subprocesses.
SETUP = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from danil_jax import models
    from danil_jax.evaluation import map_distance
    from danil_jax.runtime import input_pipeline, multihost

    NUM_CLASSES, SIZE, NUM, BATCH = 3, 16, 10, 4
    rng = np.random.default_rng(0)
    # Each image its own colour and contrast, so the predictions vary.
    source = [dict(image=np.clip(
        rng.uniform(0, 255, 3) + rng.uniform(0, 120) * rng.standard_normal(
            (SIZE, SIZE, 3)), 0, 255).astype(np.uint8),
                   label=int(rng.integers(0, NUM_CLASSES)))
              for _ in range(NUM)]
    pre = input_pipeline.Preprocessing(size=SIZE, mean=(0.5,) * 3,
                                       std=(0.25,) * 3, augment=False)
    model = models.create('small_resnet', NUM_CLASSES, widths=(4, 8))
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, SIZE, SIZE, 3)), train=False)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
    def moved(path, stat):  # running means about 0, variances about 1
      key = next(keys)
      if path[-1].key == 'mean':
        return jax.random.uniform(key, stat.shape, minval=-0.2, maxval=0.2)
      return jax.random.uniform(key, stat.shape, minval=0.5, maxval=1.5)

    variables = dict(params=variables['params'],
                     batch_stats=jax.tree_util.tree_map_with_path(
                         moved, variables['batch_stats']))

    def split_maps():
      mesh = multihost.make_mesh()
      return map_distance.per_image(
          map_distance.map_step(model.apply, mesh),
          multihost.replicate(variables, mesh), source, pre=pre,
          global_batch_size=BATCH, mesh=mesh)
''')


@pytest.fixture(scope='module')
def setup():
  scope = {}
  exec(SETUP, scope)  # pylint: disable=exec-used
  return scope


def _reference(variables, images, labels, num_classes):
  """Per image: y- (the highest logit but the label's), the top-2 softmax
  margin and ||A+ - A-||^2 from two jax.grad calls on the plain-JAX
  model."""
  def loss(x, label):
    logits, _ = plain_jax_models.small_resnet(variables, x[None],
                                              train=False)
    return -jax.nn.log_softmax(logits[0])[label]

  grad = jax.jit(jax.grad(loss))
  out = dict(distance=[], y_minus=[], margin=[])
  for x, label in zip(images, labels):
    logits, _ = plain_jax_models.small_resnet(variables, x[None],
                                              train=False)
    logits = np.asarray(logits[0], np.float64)
    others = [k for k in range(num_classes) if k != label]
    y_minus = others[int(np.argmax(logits[others]))]
    p = np.sort(np.exp(logits - logits.max()) / np.exp(
        logits - logits.max()).sum())
    a_plus, a_minus = grad(x, label), grad(x, y_minus)
    out['distance'].append(float(jnp.sum((a_plus - a_minus) ** 2)))
    out['y_minus'].append(y_minus)
    out['margin'].append(p[-1] - p[-2])
  return {k: np.array(v) for k, v in out.items()}


def test_split_maps_match_two_plain_grads_per_image(setup):
  from danil_jax.runtime import augment  # pylint: disable=g-import-not-at-top
  got = setup['split_maps']()
  source, pre = setup['source'], setup['pre']
  images = jnp.stack([augment.eval_transform(
      r['image'], size=pre.size, mean=pre.mean, std=pre.std) for r in source])
  labels = np.array([r['label'] for r in source])
  want = _reference(setup['variables'], images, labels,
                    setup['NUM_CLASSES'])
  assert len(got['distance']) == len(source)  # the padding dropped
  np.testing.assert_array_equal(got['label'], labels)
  np.testing.assert_array_equal(got['y_minus'], want['y_minus'])
  np.testing.assert_allclose(got['distance'], want['distance'], rtol=2e-4)
  np.testing.assert_allclose(got['margin'], want['margin'], atol=1e-5)
  # Both kinds of image, so y- is checked as the prediction when wrong and
  # the runner-up when right.
  wrong = got['prediction'] != labels
  assert 0 < wrong.sum() < len(labels)
  np.testing.assert_array_equal(got['y_minus'][wrong],
                                got['prediction'][wrong])
  assert np.ptp(np.log(want['distance'])) > 0.1  # not one value for all


def _maps_on(devices, tmp_path):
  out = tmp_path / f'{devices}.json'
  script = SETUP + textwrap.dedent(f'''
      import json
      assert jax.device_count() == {devices}, jax.devices()
      maps = split_maps()
      json.dump({{k: v.tolist() for k, v in maps.items()}},
                open({str(out)!r}, 'w'))
  ''')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  subprocess.run([sys.executable, '-c', script], env=env, check=True,
                 cwd=REPO, timeout=300)
  return {k: np.array(v) for k, v in json.load(open(out)).items()}


def test_split_maps_do_not_depend_on_the_device_count(tmp_path):
  one, two = _maps_on(1, tmp_path), _maps_on(2, tmp_path)
  assert one.keys() == two.keys()
  for name in ('label', 'prediction', 'y_minus'):
    np.testing.assert_array_equal(two[name], one[name], err_msg=name)
  for name in ('distance', 'margin'):
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)


def test_summary_groups_quartiles_and_near_misses():
  distance = np.arange(1.0, 21.0)  # 20 images
  margin = np.linspace(1.0, 0.05, 20)  # images 18 and 19 are the near misses
  prediction = np.zeros(20, int)
  label = np.zeros(20, int)
  label[[0, 5, 19]] = 1
  block = map_distance.summary(dict(distance=distance, margin=margin,
                                    prediction=prediction, label=label))
  assert block['all'] == dict(median=10.5, q1=5.75, q3=15.25, count=20)
  assert block['misclassified'] == dict(
      median=6.0, q1=3.5, q3=13.0, count=3)  # distances 1, 6, 20
  assert block['near_miss'] == dict(median=19.5, q1=19.25, q3=19.75,
                                    count=2)
  assert block['near_miss_max_margin'] == pytest.approx(margin[18])
  json.dumps(block, allow_nan=False)
  assert map_distance.scalars(block) == {
      'log10_map_distance': pytest.approx(np.log10(10.5)),
      'log10_map_distance_misclassified': pytest.approx(np.log10(6.0)),
      'log10_map_distance_near_miss': pytest.approx(np.log10(19.5))}


def test_near_misses_are_a_fixed_count_with_ties_by_index():
  assert map_distance.near_misses(np.full(11, 0.5)).tolist() == (
      [True, True] + [False] * 9)  # ceil(1.1) = 2
  assert map_distance.near_misses(np.array([0.3, 0.1, 0.2])).tolist() == [
      False, True, False]


def test_no_misclassified_image_leaves_its_group_empty():
  block = map_distance.summary(dict(
      distance=np.ones(4), margin=np.ones(4), prediction=np.zeros(4, int),
      label=np.zeros(4, int)))
  assert block['misclassified'] == dict(median=None, q1=None, q3=None,
                                        count=0)
  assert set(map_distance.scalars(block)) == {
      'log10_map_distance', 'log10_map_distance_near_miss'}
  assert 'misclassified  - (0)' in map_distance.format_summary(block)


def test_predictions_csv_gains_the_columns(tmp_path):
  predictions = scoring.Predictions(
      labels=np.array([0, 1]), probabilities=np.array([[0.7, 0.3],
                                                       [0.6, 0.4]]),
      loss=0.0, metadata={'index': np.arange(2)})
  images = dict(distance=np.array([0.25, 2.0]), y_minus=np.array([1, 0]))
  predictions.columns = map_distance.columns(images, ['a', 'b'])
  path = tmp_path / 'predictions.csv'
  scoring.write_predictions_csv(str(path), predictions, ['a', 'b'])
  lines = path.read_text().splitlines()
  assert lines[0] == 'id,label,prediction,a,b,map_distance,y_minus'
  assert lines[1].endswith(',0.25,b') and lines[2].endswith(',2.0,a')
