"""The run's metrics log, `WORKDIR/metrics.jsonl`: one JSON object a line.

Lines carry the global `step` they describe. A resumed run first drops the
lines written after its checkpoint, so the log reads like that of one
uninterrupted run. The workdir may be any path etils.epath handles; object
stores (`gs://...`) have no append, so there a write rewrites the file.
"""

import json
import os

from etils import epath


class MetricsLog:

  def __init__(self, workdir, *, enabled: bool = True):
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not self.path.exists():
      return
    kept = [line + '\n' for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get('step', 0) <= step]
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
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines()
            if line.strip()]
