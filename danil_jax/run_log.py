"""The run's metrics log, `WORKDIR/metrics.jsonl`: one JSON object a line.

Lines carry the global `step` they describe. A resumed run first drops the
lines written after its checkpoint, so the log reads like that of one
uninterrupted run.
"""

import json
import os


class MetricsLog:

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f
              if line.strip() and json.loads(line).get('step', 0) <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]
