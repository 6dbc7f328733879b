"""Helpers for the builders' tests: fixture copies and reading splits back."""

from __future__ import annotations

import collections
import io
import os
import shutil
import zipfile

from danil_jax import data_prep

HERE = os.path.dirname(os.path.abspath(__file__))


def dummy_dir(name: str) -> str:
  """The committed fixture of builder `name` (see make_dummy_data.py)."""
  return os.path.join(HERE, name, 'dummy_data')


def copy_dummy(name: str, dst: str) -> str:
  """A writable copy of the fixture, for tests that break it."""
  shutil.copytree(dummy_dir(name), dst)
  return dst


def rewrite_zip(path: str, edit) -> None:
  """Rewrites zip `path` with `edit(members: dict[name, bytes])` applied."""
  with zipfile.ZipFile(path) as archive:
    members = {n: archive.read(n) for n in archive.namelist()}
  edit(members)
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in members.items():
      archive.writestr(name, data)


def truncated_png() -> bytes:
  """A PNG cut short: opens (valid header) but cannot be decoded."""
  import numpy as np
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)
                  ).save(out, format='PNG')
  return out.getvalue()[:len(out.getvalue()) // 2]


def build(name: str, manual_dir: str, data_dir: str, config: str | None = None):
  return data_prep.prepare(name, data_dir=data_dir, manual_dir=manual_dir,
                           config=config)


def read_splits(builder, fields: tuple[str, ...]) -> dict[str, list[dict]]:
  """split -> list of {field: value} (bytes decoded), in storage order."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    rows = []
    for i in range(len(source)):
      example = source[i]
      rows.append({f: (example[f].decode() if isinstance(example[f], bytes)
                       else example[f]) for f in fields})
    out[split] = rows
  return out


def label_counts(rows: list[dict]) -> dict[int, int]:
  counts = collections.Counter(int(r['label']) for r in rows)
  return dict(sorted(counts.items()))


def values(rows: list[dict], field: str) -> set:
  return {r[field] for r in rows}


def assert_build_fails(name: str, manual_dir, data_dir, error, *fragments):
  """Building `name` raises `error` whose message has every fragment, and
  leaves nothing that reads as a built dataset; returns the error."""
  import pytest  # pylint: disable=g-import-not-at-top
  data_dir = str(data_dir)
  with pytest.raises(error) as info:
    build(name, str(manual_dir), data_dir)
  for fragment in fragments:
    assert fragment in str(info.value)
  builder = data_prep.get_builder(name, data_dir=data_dir)
  assert not builder.is_prepared()
  # TFDS writes into a temporary folder it deletes on failure.
  variant = os.path.dirname(builder.data_dir)
  if os.path.isdir(variant):
    assert not [d for d in os.listdir(variant) if d.startswith('incomplete')]
  return info.value
