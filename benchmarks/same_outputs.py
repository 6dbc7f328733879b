"""Whether two output trees of benchmarks/same_outputs.sh agree.

  python benchmarks/same_outputs.py OUT/a OUT/b     # exit 0: they agree

Every file is compared byte for byte, with each tree's own root path written
as ROOT (CSVs and logs name their files). Where bytes differ for a known
reason, the file is compared again without it, and must then agree exactly:
- wall-clock fields (`images_per_s`, orbax's timestamps) in metrics.jsonl
  and the checkpoint metadata;
- the consoles' progress bars, absl warning lines and timings;
- TensorBoard event files (their names and records carry wall times): the
  (step, tag, value) of every scalar instead;
- orbax checkpoints (OCDBT files have random names): every restored array,
  its dtype and bytes, instead.
"""

import json
import os
import re
import struct
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from tensorboard.compat.proto import event_pb2

TIME_KEYS = ('images_per_s', 'timestamp')


def _files(root: str) -> dict[str, str]:
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      out[os.path.relpath(path, root)] = path
  return out


def _without_times(obj):
  if isinstance(obj, dict):
    return {k: _without_times(v) for k, v in obj.items()
            if not any(t in k for t in TIME_KEYS)}
  if isinstance(obj, list):
    return [_without_times(v) for v in obj]
  return obj


def _console(text: bytes) -> list[str]:
  lines = text.decode(errors='replace').replace('\r', '\n').splitlines()
  return [l for l in lines if '%|' not in l
          and not re.match(r'^[IWE]\d{4} ', l)
          and not re.search(r'\d+(\.\d+)? ?(s|ms|min)\b', l)]


def _is_checkpoint_data(rel: str) -> bool:
  return '/state/' in rel or rel.endswith('commit_success.txt')


def _scalars(root: str) -> list[tuple]:
  """(directory, step, tag, value) of every TensorBoard scalar under root."""
  out = []
  for rel, path in sorted(_files(root).items()):
    if 'tfevents' not in rel:
      continue
    data, i = open(path, 'rb').read(), 0
    while i < len(data):  # TFRecord: length, its CRC, the record, its CRC
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if not any(t in v.tag for t in TIME_KEYS):
          out.append((os.path.dirname(rel), event.step, v.tag,
                      v.simple_value, bytes(v.tensor.tensor_content),
                      tuple(v.tensor.float_val)))
  return out


def _same_arrays(a: str, b: str) -> tuple[bool, int]:
  leaves_a, tree_a = jax.tree.flatten(ocp.PyTreeCheckpointer().restore(a))
  leaves_b, tree_b = jax.tree.flatten(ocp.PyTreeCheckpointer().restore(b))
  same = tree_a == tree_b and all(
      np.asarray(x).dtype == np.asarray(y).dtype
      and np.asarray(x).tobytes() == np.asarray(y).tobytes()
      for x, y in zip(leaves_a, leaves_b))
  return same, len(leaves_a)


def compare(a: str, b: str) -> list[str]:
  """Prints what was compared; returns what differs."""
  files_a, files_b = _files(a), _files(b)
  bad = [f'only in one tree: {r}' for r in sorted(set(files_a) ^ set(files_b))
         if not _is_checkpoint_data(r) and 'tfevents' not in r]
  identical = 0
  for rel in sorted(set(files_a) & set(files_b)):
    if _is_checkpoint_data(rel) or 'tfevents' in rel:
      continue
    x = open(files_a[rel], 'rb').read().replace(os.path.abspath(a).encode(),
                                                 b'ROOT')
    y = open(files_b[rel], 'rb').read().replace(os.path.abspath(b).encode(),
                                                 b'ROOT')
    if x == y:
      identical += 1
      continue
    if rel.startswith('tfds/'):
      print(f'{rel}: the data build\'s metadata, not compared')
      continue
    if rel.endswith('.log'):
      same, how = _console(x) == _console(y), 'console without timings'
    elif rel.endswith('.jsonl'):
      same = ([_without_times(json.loads(l)) for l in x.splitlines()] ==
              [_without_times(json.loads(l)) for l in y.splitlines()])
      how = 'records without wall-clock fields'
    elif rel.endswith('_CHECKPOINT_METADATA') or rel.endswith('.json'):
      same = _without_times(json.loads(x)) == _without_times(json.loads(y))
      how = 'JSON without wall-clock fields'
    else:
      same, how = False, 'bytes'
    print(f'{rel}: {how}: {"same" if same else "DIFFERENT"}')
    if not same:
      bad.append(rel)
  print(f'{identical} files byte-identical')
  checkpoints = sorted({os.path.dirname(r) for r in files_a
                        if r.endswith('/state/manifest.ocdbt')})
  for rel in checkpoints:
    same, count = _same_arrays(os.path.join(a, rel), os.path.join(b, rel))
    print(f'{rel}: {count} arrays {"byte-identical" if same else "DIFFERENT"}')
    if not same:
      bad.append(rel)
  scalars_a, scalars_b = _scalars(a), _scalars(b)
  same = scalars_a == scalars_b and bool(scalars_a)
  print(f'TensorBoard: {len(scalars_a)} scalars (step, tag, value): '
        f'{"same" if same else "DIFFERENT"}')
  if not same:
    bad.append('TensorBoard scalars')
  return bad


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  bad = compare(argv[1], argv[2])
  print('RESULT: ' + ('the same (wall-clock fields aside)' if not bad else
                      f'DIFFERENT: {bad}'))
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
