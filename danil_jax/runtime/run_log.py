"""The run's metrics log, `WORKDIR/metrics.jsonl`: one JSON object a line.

Lines carry the global `step` they describe. A resumed run first drops the
lines written after its checkpoint, so the log reads like that of one
uninterrupted run. A last line cut short (a kill or a full disk during a
write) is dropped with a warning. The workdir may be any path etils.epath
handles; object stores (`gs://...`) have no append, so there a write rewrites
the file.
"""

import json
import os

from absl import logging
from etils import epath


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
