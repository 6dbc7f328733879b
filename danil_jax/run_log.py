"""The run's metrics log, `WORKDIR/metrics.jsonl`: one JSON object a line.

Lines carry the global `step` they describe. A resumed run first drops the
lines written after its checkpoint, so the log reads like that of one
uninterrupted run. A last line cut short (a kill or a full disk during a
write) is dropped with a warning.
"""

import json
import os

from absl import logging


class MetricsLog:

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [line.rstrip('\n') + '\n' for record, line in self._parse()
            if record.get('step', 0) <= step]
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
    return [record for record, _ in self._parse()]

  def _parse(self) -> list[tuple[dict, str]]:
    """(record, line) for each whole line of the log."""
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      lines = [(number, line) for number, line in enumerate(f, 1)
               if line.strip()]
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
