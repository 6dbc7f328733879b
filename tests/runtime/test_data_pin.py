"""WORKDIR/data.json: a run's folder data set rebuilt from a changed source
stops a resume and an evaluation; the paper's data sets pin nothing."""

import os

import pytest

from danil_jax.configs import folder
from danil_jax.runtime import data_pin
from danil_jax import data_prep
from danil_jax.data_prep.own import fixtures


def _dataset(tmp_path):
  fixtures.make_folder(str(tmp_path / 'images'))
  dataset = folder.get_config().dataset
  dataset.manual_dir = str(tmp_path / 'images')
  dataset.data_dir = str(tmp_path / 'tfds')
  dataset.own.workers = 1
  return dataset


def test_a_rebuilt_data_set_stops_a_resume_and_an_evaluation(tmp_path):
  dataset = _dataset(tmp_path)
  workdir = tmp_path / 'work'
  workdir.mkdir()
  built = data_prep.open_dataset(dataset)
  data_pin.pin(workdir, built, write=True, allow_change=False)
  assert (workdir / data_pin.DATA_FILE).exists()
  data_pin.pin(workdir, built, write=True, allow_change=False)  # a resume
  data_pin.check(workdir, built)
  os.remove(tmp_path / 'images' / 'benign' / 'P000_0.png')
  rebuilt = data_prep.open_dataset(dataset)
  with pytest.raises(data_pin.DataChanged, match='rebuilt from a changed'):
    data_pin.pin(workdir, rebuilt, write=True, allow_change=False)
  with pytest.raises(data_pin.DataChanged, match='evaluate a run'):
    data_pin.check(workdir, rebuilt)
  # Allowed: the run goes on and pins the new data.
  data_pin.pin(workdir, rebuilt, write=True, allow_change=True)
  data_pin.check(workdir, rebuilt)


def test_builders_without_a_fingerprint_pin_nothing(tmp_path):
  class Builder:  # the paper's builders have no `fingerprint`
    pass
  data_pin.pin(tmp_path, Builder(), write=True, allow_change=False)
  assert not (tmp_path / data_pin.DATA_FILE).exists()

