"""configs/{ham10000,aptos2019,crc_msi}.py: consistent with their builders,
stop at once without the data, and train end to end on the dummy data."""

import importlib
import json
import os

import pytest

from danil_jax import data_prep
from danil_jax.data_prep import common
from danil_jax.data_prep import testing

NAMES = ['ham10000', 'aptos2019', 'crc_msi']


def _config(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', NAMES)
def test_config_matches_its_builder(name, tmp_path):
  config = _config(name)
  assert config.dataset.name == name
  builder = data_prep.get_builder(name, data_dir=str(tmp_path),
                                  config=config.dataset.builder_config)
  assert builder.builder_config.name == config.dataset.builder_config
  assert (builder.info.features['label'].num_classes ==
          config.dataset.num_classes)
  assert config.dataset.manual_dir == f'~/danil_data/{name}'
  # The paper's hyperparameters.
  assert config.model.name == 'resnet50'
  assert config.optim.learning_rate == 0.01 and config.num_epochs == 30
  assert config.danil.lam == 1e-5 and config.danil.eps == 1e-4
  assert config.dataset.eval_split == 'test'
  assert 'test' not in config.dataset.train_split


@pytest.mark.parametrize('name', NAMES)
def test_without_the_archives_prepare_stops_at_once(name, tmp_path):
  config = _config(name)
  manual = tmp_path / 'manual'
  with pytest.raises(common.ManualFilesMissing) as info:
    data_prep.prepare(name, data_dir=str(tmp_path / 'data'),
                      manual_dir=str(manual),
                      config=config.dataset.builder_config or None)
  message = str(info.value)
  assert str(manual) in message and 'https://' in message
  assert '.zip' in message
  assert not (tmp_path / 'data' / name / config.dataset.builder_config).exists()


def test_without_a_manual_dir_the_tfds_default_is_named(tmp_path):
  with pytest.raises(common.ManualFilesMissing) as info:
    data_prep.prepare('crc_msi', data_dir=str(tmp_path))
  assert str(tmp_path / 'downloads' / 'manual') in str(info.value)


def test_crc_msi_config_trains_on_the_dummy_data(tmp_path):
  """configs/crc_msi.py, shrunk to a tiny model, builds and trains."""
  train = pytest.importorskip('danil_jax.trainer.train')
  config = _config('crc_msi')
  config.dataset.manual_dir = testing.dummy_dir('crc_msi')
  config.dataset.data_dir = str(tmp_path / 'data')
  config.model.name = 'small_resnet'
  config.model.pretrained = ''
  config.dataset.image_size = 16
  config.input.global_batch_size = 8
  config.input.eval_batch_size = 8
  config.input.num_workers = 0
  config.num_epochs = 1
  config.max_steps = 2
  config.lock()
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'metrics.jsonl') as f:
    final = [json.loads(line) for line in f][-1]
  assert final['split'] == 'test'
  assert data_prep.get_builder('crc_msi', data_dir=str(tmp_path / 'data')
                               ).is_prepared()
  assert os.listdir(tmp_path / 'work')


def test_trainer_without_the_archives_exits_with_the_instructions(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.main', '--config=configs/crc_msi.py',
       f'--workdir={tmp_path / "work"}',
       f'--config.dataset.manual_dir={tmp_path / "nowhere"}',
       f'--config.dataset.data_dir={tmp_path / "data"}'],
      cwd=repo, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'CRC_DX_TRAIN_MSIMUT.zip' in result.stderr
  assert str(tmp_path / 'nowhere') in result.stderr
  assert 'Traceback' not in result.stderr
