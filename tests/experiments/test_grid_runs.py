"""The one rule by which compare and paper reuse a finished run."""

import json

import ml_collections
import pytest

from danil_jax.experiments import grid_runs
from danil_jax.runtime import run_config


def _config(method='base'):
  return ml_collections.ConfigDict(dict(
      seed=0, method=method, num_epochs=3, max_steps=-1, log_every_steps=50,
      dataset=dict(data_dir='/a', manual_dir=''),
      input=dict(num_workers=4), eval=dict(tta='none'),
      danil=dict(lam=1e-5), ohem=dict(keep=0.5),
      optim=dict(learning_rate=0.01)))


def _finished(path, config):
  (path / run_config.CONFIG_FILE).write_text(config.to_json_best_effort())
  (path / grid_runs.FINAL_METRICS).write_text(json.dumps(dict(
      macro_f1=0.5, step=7, split='test')))


def test_incidental_keys_are_run_configs_less_those_changing_the_report():
  assert set(grid_runs.INCIDENTAL) < set(run_config.OBSERVE_ONLY)
  assert set(run_config.PER_HOST) <= set(grid_runs.INCIDENTAL)
  for key in ('num_epochs', 'max_steps', 'eval.tta'):
    assert key not in grid_runs.INCIDENTAL


def test_only_keys_that_change_the_report_make_another_run(tmp_path):
  _finished(tmp_path, _config())
  asked = _config()
  asked.dataset.data_dir, asked.input.num_workers = '/b', 0
  asked.log_every_steps = 1
  asked.danil.lam = 0.1  # a Base run does not read danil.*
  assert grid_runs.mismatches(str(tmp_path), asked) == []
  assert grid_runs.finished_report(str(tmp_path), asked) == dict(
      macro_f1=0.5, step=7.0)
  asked.num_epochs, asked.eval.tta = 4, 'flips'
  asked.optim.learning_rate = 0.5
  assert grid_runs.mismatches(str(tmp_path), asked) == [
      "eval.tta: run has 'none', grid asks 'flips'",
      'num_epochs: run has 3, grid asks 4',
      'optim.learning_rate: run has 0.01, grid asks 0.5']
  assert grid_runs.finished_report(str(tmp_path), asked) is None


def test_the_method_read_sections_count_and_one_sided_keys_do_not(tmp_path):
  _finished(tmp_path, _config('danil'))
  asked = _config('danil')
  asked.unlock()
  asked.added_later = True  # another danil-jax version's key
  assert grid_runs.mismatches(str(tmp_path), asked) == []
  asked.danil.lam = 0.1
  assert grid_runs.mismatches(str(tmp_path), asked) == [
      'danil.lam: run has 1e-05, grid asks 0.1']


def test_a_run_without_a_readable_config_is_not_the_one_asked_for(tmp_path):
  _finished(tmp_path, _config())
  (tmp_path / run_config.CONFIG_FILE).unlink()
  [line] = grid_runs.mismatches(str(tmp_path), _config())
  assert line.startswith('config.json cannot be read')
  assert grid_runs.finished_report(str(tmp_path), _config()) is None


@pytest.mark.parametrize('text,current,value', [
    ('true', False, True), ('0', True, False), ('3', 1, 3),
    ('1e-3', 0.5, 1e-3), ("('a', 'b')", ('x',), ('a', 'b')),
    ('a', ('x',), None), ('s', 'x', 's'), ('s', None, 's')])
def test_text_is_parsed_to_the_type_of_the_value_it_replaces(text, current,
                                                              value):
  if value is None:  # not a Python literal
    with pytest.raises(ValueError, match="k='a': expected a tuple"):
      grid_runs.parse_value(text, current, 'k')
  else:
    parsed = grid_runs.parse_value(text, current, 'k')
    assert parsed == value and type(parsed) is type(value)
