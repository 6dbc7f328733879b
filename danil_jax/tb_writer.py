"""TensorBoard event files of a run's scalars, written without TensorFlow.

The trainer mirrors every `metrics.jsonl` record into `WORKDIR/tensorboard`
(`tensorboard --logdir=WORKDIR` shows them): a train record's numbers as
`train/<key>`, an evaluation's as `<split>/<key>` (per-class dicts as
`<split>/<key>/<class>`). Written with tensorboard's own pure-Python event
writer (the `tensorboard` package, no TensorFlow).
"""

from __future__ import annotations

import math
import numbers

import time

from etils import epath

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer

TB_DIR = 'tensorboard'
# Record fields that are not metrics.
_SKIP = ('kind', 'step', 'split', 'model')

def scalars(record: dict) -> dict[str, float]:
  """tag -> value for the finite numbers of a metrics.jsonl record."""
  kind = record.get('kind', 'train')
  prefix = 'train' if kind == 'train' else record.get('split', kind)
  if record.get('model'):
    prefix += '_' + record['model']
  out = {}

  def add(tag, value):
    if (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value)):
      out[tag] = float(value)

  for key, value in record.items():
    if key in _SKIP:
      continue
    if isinstance(value, dict):
      for name, v in value.items():
        add(f'{prefix}/{key}/{name}', v)
    else:
      add(f'{prefix}/{key}', value)
  return out

class ScalarWriter:
  """Appends scalar events; on resume, hides the old events past the
  checkpoint (a SessionLog START makes TensorBoard purge later steps)."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               start_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    self.logdir = str(epath.Path(workdir) / TB_DIR)
    self._writer = event_file_writer.EventFileWriter(self.logdir,
                                                     flush_secs=10)
    if start_step:
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=start_step + 1,
          session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=value)
              for tag, value in scalars(record).items()]
    if values:
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(record['step']),
          summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    if self.enabled:
      self._writer.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.close()
