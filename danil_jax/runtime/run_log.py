"""The run's metrics: `WORKDIR/metrics.jsonl` and its TensorBoard mirror.

`MetricsLog` keeps `metrics.jsonl`, one JSON object a line.

Lines carry the global `step` they describe. A resumed run first drops the
lines written after its checkpoint, so the log reads like that of one
uninterrupted run. A last line cut short (a kill or a full disk during a
write) is dropped with a warning. The workdir may be any path etils.epath
handles; object stores (`gs://...`) have no append, so there a write rewrites
the file.

`ScalarWriter` mirrors every record into `WORKDIR/tensorboard`
(`tensorboard --logdir=WORKDIR` shows them): a train record's numbers as
`train/<key>`, an evaluation's as `<split>/<key>` (per-class dicts as
`<split>/<key>/<class>`). Written with tensorboard's own pure-Python event
writer (the `tensorboard` package, no TensorFlow).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time

from absl import logging
from etils import epath
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer


class MetricsLog:

  def __init__(self, workdir, *, enabled: bool = True):
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not self.path.exists():
      return
    kept = [line.rstrip('\n') + '\n' for record, line in self._parse()
            if record.get('step', 0) <= step]
    tmp = self.path.with_name(self.path.name + '.tmp')
    tmp.write_text(''.join(kept))
    tmp.replace(self.path)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    line = json.dumps(record) + '\n'
    if '://' in os.fspath(self.path):  # an object store: no append
      old = self.path.read_text() if self.path.exists() else ''
      self.path.write_text(old + line)
      return
    with self.path.open('a') as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> list[dict]:
    return [record for record, _ in self._parse()]

  def _parse(self) -> list[tuple[dict, str]]:
    """(record, line) for each whole line of the log."""
    if not self.path.exists():
      return []
    lines = [(number, line) for number, line in
             enumerate(self.path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
      try:
        records.append((json.loads(line), line))
      except json.JSONDecodeError as e:
        if i + 1 < len(lines):
          raise ValueError(f'{self.path}, line {number}: not a JSON record '
                           f'({e}): {line[:80]!r}') from None
        # A write cut short (a kill, a full disk): that record is lost, the
        # ones before are whole.
        logging.warning('%s: dropping its last line %d, cut short: %r',
                        self.path, number, line[:80])
    return records


# ----------------------------------------------------- TensorBoard events --


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

  # tensorboard's EventFileWriter takes Event protos, and a `simple_value`
  # summary is what its scalar dashboard reads without TensorFlow.
  # tensorboard.summary.Writer (experimental) writes tensor summaries
  # instead; tensorboardX rewrites tags with spaces (a class named
  # 'No Finding'), gives two writers started within a second one file, and
  # imports torch wherever torch is installed.

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
