"""Methods over seeds: the summary statistics and the command end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from danil_jax import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mean_sample_sd_and_paired_difference():
  results = {
      'base': {0: dict(macro_f1=0.50, accuracy=0.60),
               1: dict(macro_f1=0.70, accuracy=0.80)},
      'danil': {0: dict(macro_f1=0.55, accuracy=0.60),
                1: dict(macro_f1=0.80, accuracy=0.90)},
  }
  summary = compare.summarize(results)
  f1 = summary['danil']['macro_f1']
  assert f1['mean'] == pytest.approx(0.675)
  assert f1['sd'] == pytest.approx(np.sqrt(2 * 0.125 ** 2))  # ddof=1
  # Paired differences 0.05 and 0.10.
  assert f1['minus_base']['mean'] == pytest.approx(0.075)
  assert f1['minus_base']['sd'] == pytest.approx(np.sqrt(2 * 0.025 ** 2))
  assert summary['base']['accuracy']['sd'] == pytest.approx(np.sqrt(0.02))
  assert 'minus_base' not in summary['base']['accuracy']
  table = compare.format_summary(summary)
  assert '0.6750 +- 0.1768 (+0.0750)' in table


def test_command_trains_each_seed_and_summarises_their_final_metrics(
    tmp_path):
  work = tmp_path / 'work'
  result = subprocess.run(
      [sys.executable, '-m', 'danil_jax.compare', '--config=configs/demo.py',
       f'--workdir={work}', '--methods=base', '--seeds=3,4',
       f'--config.dataset.data_dir={tmp_path / "data"}',
       '--config.max_steps=1', '--config.input.global_batch_size=8',
       '--config.input.eval_batch_size=200'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(work / 'comparison.json'))
  finals = [json.load(open(work / f'base_seed{s}' / 'final_metrics.json'))
            for s in (3, 4)]
  assert summary['base']['seeds'] == [3, 4]
  assert summary['base']['accuracy']['values'] == [f['accuracy']
                                                   for f in finals]
  assert 'mean +- sample sd over seeds' in result.stdout
