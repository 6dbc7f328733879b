"""The data a run trained on, pinned in its workdir: `WORKDIR/data.json`.

A folder or CSV data set (danil_jax/data_prep/own) is rebuilt when its source
changes, and its splits may move with it: a run that trained on the old
build would then resume, or be evaluated, on other splits, its test split
perhaps holding images it trained on, and nothing would show it. So the
first run writes the fingerprint of the data it opened; a resume compares
it (an error unless config.faults.allow_config_change), and so do the
commands that read the data (evaluate, response_maps); predict takes its
class names from it. Data sets without a fingerprint (the paper's, built
from fixed archives) pin nothing.
"""

from __future__ import annotations

import json

from absl import logging
from etils import epath

from danil_jax.data_prep import common

DATA_FILE = 'data.json'


class DataChanged(common.DataError):
  """The run's data set was rebuilt from a changed source since it trained."""


def _current(builder) -> dict | None:
  fingerprint = getattr(builder, 'fingerprint', None)
  if not fingerprint:
    return None
  return {'fingerprint': fingerprint,
          'class_names': list(builder.info.features['label'].names),
          'data_dir': str(builder.data_dir)}


def _differs(workdir, builder) -> str | None:
  """None if the run's data is `builder`'s (or nothing is pinned), else why."""
  current = _current(builder)
  path = epath.Path(workdir) / DATA_FILE
  if current is None or not path.exists():
    return None
  pinned = json.loads(path.read_text())
  if pinned['fingerprint'] == current['fingerprint']:
    return None
  return (f'the data set in {current["data_dir"]} was rebuilt from a '
          f'changed source since the run in {workdir} trained on it '
          f'(fingerprint {pinned["fingerprint"][:12]} in {path}, now '
          f'{current["fingerprint"][:12]}; classes {pinned["class_names"]} '
          f'-> {current["class_names"]}); its splits may differ from those '
          'the run trained and selected on')


def pin(workdir, builder, *, write: bool, allow_change: bool) -> None:
  """Writes the fingerprint of `builder`'s data, or checks it on a resume."""
  reason = _differs(workdir, builder)
  if reason and not allow_change:
    raise DataChanged(reason + '; train in a new workdir, or set '
                      'config.faults.allow_config_change=True to go on')
  if reason:
    logging.warning('%s; going on (config.faults.allow_config_change)',
                    reason)
  current = _current(builder)
  if write and current is not None and (reason or not (
      epath.Path(workdir) / DATA_FILE).exists()):
    (epath.Path(workdir) / DATA_FILE).write_text(json.dumps(current))


def check(workdir, builder) -> None:
  """Raises DataChanged if `builder`'s data is not what the run trained on."""
  reason = _differs(workdir, builder)
  if reason:
    raise DataChanged(reason + '; evaluate a run trained on the current data')


def class_names(workdir) -> list[str] | None:
  """The class names the run trained with, if it pinned its data: enough
  for predict, without the data set (on another machine, say)."""
  path = epath.Path(workdir) / DATA_FILE
  return json.loads(path.read_text())['class_names'] if path.exists() else None
