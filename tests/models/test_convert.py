"""The converter's files, CLI, error messages and head re-initialisation.

Checked against the torch state_dict itself with the layout rules written out
by hand (conv OIHW -> HWIO, linear transpose), never against our own output.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from danil_jax import models
from danil_jax.models import weights

torch = pytest.importorskip(
    'torch', reason='building reference checkpoints needs torch (pip install '
    '"danil_jax[torch]")')
torchvision = pytest.importorskip('torchvision')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def resnet_state():
  torch.manual_seed(0)
  model = torchvision.models.resnet50(weights=None)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
  return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_layout(variables, state):
  flat = weights.flatten(variables)
  np.testing.assert_array_equal(flat['params/conv1/kernel'],
                                state['conv1.weight'].numpy().transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(flat['params/fc/kernel'],
                                state['fc.weight'].numpy().T)
  np.testing.assert_array_equal(flat['params/layer2/0/downsample/1/scale'],
                                state['layer2.0.downsample.1.weight'].numpy())
  np.testing.assert_array_equal(flat['batch_stats/layer4/2/bn3/var'],
                                state['layer4.2.bn3.running_var'].numpy())
  assert not any('num_batches_tracked' in k for k in flat)
  # Every torch tensor but num_batches_tracked lands somewhere.
  assert len(flat) == sum(not k.endswith('num_batches_tracked')
                          for k in state)


def test_cli_converts_safetensors_without_torch(tmp_path, resnet_state):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  checkpoint = str(tmp_path / 'model.safetensors')
  save_file({k: v.contiguous() for k, v in resnet_state.items()}, checkpoint)
  out = tmp_path / 'flax'
  # A fake `torch` that fails on import proves the path needs no torch.
  blocker = tmp_path / 'blocker'
  blocker.mkdir()
  (blocker / 'torch.py').write_text('raise ImportError("torch blocked")\n')
  env = dict(os.environ, PYTHONPATH=f'{blocker}{os.pathsep}{REPO}',
             JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.convert', '--arch=resnet50',
       f'--checkpoint={checkpoint}', f'--out={out}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resnet50 (1000 classes)' in result.stdout
  assert weights.read_metadata(str(out))['num_classes'] == 1000
  _check_layout(weights.load('resnet50', str(out)), resnet_state)


def test_pth_round_trip_and_module_prefix(tmp_path, resnet_state):
  # DataParallel checkpoints prefix every key with 'module.'.
  checkpoint = str(tmp_path / 'model.pth')
  torch.save({'state_dict': {f'module.{k}': v
                             for k, v in resnet_state.items()}}, checkpoint)
  meta = weights.convert_file('resnet50', checkpoint, str(tmp_path / 'out'))
  assert meta['arch'] == 'resnet50'
  _check_layout(weights.load('resnet50', str(tmp_path / 'out')),
                resnet_state)


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(resnet_state):
  state = {k: v.numpy() for k, v in resnet_state.items()}
  del state['layer1.0.conv2.weight']
  state['layer1.0.extra.weight'] = np.zeros((3, 3), np.float32)
  state['layer3.1.bn2.running_mean'] = np.zeros((7,), np.float32)
  with pytest.raises(weights.ConversionError) as error:
    weights.convert_state_dict('resnet50', state)
  message = str(error.value)
  assert "missing key 'layer1.0.conv2.weight' (expected shape (64, 64, 3, 3))" \
      in message
  assert "unexpected key 'layer1.0.extra.weight'" in message
  assert "'layer3.1.bn2.running_mean' has shape (7,), expected (256,)" \
      in message


def test_wrong_arch_and_missing_file_are_clear_errors(tmp_path, resnet_state):
  state = {k: v.numpy() for k, v in resnet_state.items()}
  with pytest.raises(weights.ConversionError, match='classifier bias'):
    weights.convert_state_dict('vgg11', state)
  with pytest.raises(weights.ConversionError, match='unknown arch'):
    weights.convert_state_dict('resnet51', state)
  with pytest.raises(weights.ConversionError, match='not found'):
    weights.read_state_dict(str(tmp_path / 'nope.pth'))
  with pytest.raises(weights.ConversionError, match='not a converted'):
    weights.load('resnet50', str(tmp_path))


def _converted(resnet_state):
  pretrained, _ = weights.convert_state_dict(
      'resnet50', {k: v.numpy() for k, v in resnet_state.items()})
  return pretrained


def _init_shapes(num_classes):
  """resnet50's variables as shapes only (no compile)."""
  model = models.create('resnet50', num_classes)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def test_merge_reinitialises_only_a_resized_head(resnet_state):
  pretrained = _converted(resnet_state)
  shapes = _init_shapes(4)
  # Stand-in fresh init (a real one takes a long compile on CPU).
  init = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)
  merged = weights.merge_pretrained(init, pretrained,
                                    head=models.info('resnet50').head)
  flat, flat_init = weights.flatten(merged), weights.flatten(init)
  pre = weights.flatten(pretrained)
  assert set(flat) == set(flat_init)
  for key in flat:
    if key.startswith('params/fc/'):
      np.testing.assert_array_equal(flat[key], flat_init[key])
    else:
      np.testing.assert_array_equal(flat[key], pre[key])
  assert flat['params/fc/kernel'].shape == (2048, 4)


def test_merge_rejects_any_other_mismatch(resnet_state):
  pretrained = _converted(resnet_state)
  init = _init_shapes(1000)
  flat = weights.flatten(pretrained)
  del flat['params/layer1/0/conv1/kernel']
  flat['params/layer9/kernel'] = np.zeros((2,), np.float32)
  flat['batch_stats/bn1/mean'] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError) as error:
    weights.merge_pretrained(init, weights.unflatten(flat), head=('fc',))
  message = str(error.value)
  assert 'missing in pretrained: params/layer1/0/conv1/kernel' in message
  assert 'unexpected in pretrained: params/layer9/kernel' in message
  assert 'shape mismatch: batch_stats/bn1/mean pretrained (3,)' in message


def test_trainer_fine_tunes_from_a_converted_checkpoint(tmp_path, monkeypatch,
                                                        resnet_state):
  """--config.model.pretrained=DIR: 1000-class weights, 4-class demo task."""
  from danil_jax.configs import demo  # pylint: disable=g-import-not-at-top
  from danil_jax.trainer import train  # pylint: disable=g-import-not-at-top
  checkpoint = str(tmp_path / 'resnet50.pth')
  torch.save(resnet_state, checkpoint)
  weights.convert_file('resnet50', checkpoint, str(tmp_path / 'pretrained'))
  merged = []
  real_merge = weights.merge_pretrained

  def spy(*args, **kw):
    result = real_merge(*args, **kw)
    merged.append(jax.device_get(result))  # the trainer donates `result`
    return result

  monkeypatch.setattr(weights, 'merge_pretrained', spy)
  config = demo.get_config()
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.model.name = 'resnet50'
  config.model.pretrained = str(tmp_path / 'pretrained')
  config.method = 'base'  # the cheapest compile; DANIL is proven above
  config.dataset.image_size = 32
  config.max_steps = 1
  config.input.global_batch_size = 4
  config.input.eval_batch_size = 200
  report = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert sum(map(sum, report['confusion_matrix'])) == 800
  (variables,) = merged
  np.testing.assert_array_equal(
      variables['params']['conv1']['kernel'],
      resnet_state['conv1.weight'].numpy().transpose(2, 3, 1, 0))
  assert variables['params']['fc']['kernel'].shape == (2048, 4)
