"""Helpers shared by the real-dataset builders (HAM10000, APTOS 2019, CRC-MSI).

Everything here works on the archives exactly as distributed, without
TensorFlow: zip members are read with `zipfile` (no extraction to disk), CSV
files with the `csv` module, images are decoded with PIL to validate them.
Errors are `DataError`s whose message names the offending file and says what
was expected, so a user can fix the manual directory without reading code.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import threading
import zipfile
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image


class DataError(ValueError):
  """The manual files exist but their content is not what a builder expects."""


class ManualFilesMissing(FileNotFoundError):
  """The manual directory lacks the archives a builder needs."""


def listdir_ci(path: str) -> dict[str, str]:
  """Lower-cased name -> real name of the entries of `path` ({} if absent).

  The datasets circulate with several capitalisations (Kaggle's HAM10000 copy
  ships both `HAM10000_images_part_1/` and `ham10000_images_part_1/`), so
  builders look their files up case-insensitively.
  """
  if not os.path.isdir(path):
    return {}
  return {name.lower(): name for name in sorted(os.listdir(path))}


def find_entries(path: str, candidates: Iterable[str]) -> list[str]:
  """Full paths of the entries of `path` whose lower-cased name is listed."""
  names = listdir_ci(path)
  return [os.path.join(path, names[c]) for c in candidates if c in names]


def missing_files_error(manual_dir: str, what: str,
                        instructions: str) -> ManualFilesMissing:
  """The error raised when `manual_dir` lacks `what` (a short description)."""
  state = ('does not exist' if not os.path.isdir(manual_dir) else
           'is empty' if not os.listdir(manual_dir) else
           f'has no {what} (it contains: '
           f'{", ".join(sorted(os.listdir(manual_dir))[:10])})')
  return ManualFilesMissing(
      f'Manual directory {manual_dir} {state}.\n{instructions.strip()}')


def _is_junk(path: str) -> bool:
  # Zips made on macOS carry '__MACOSX/.../._name' resource forks that share
  # the images' names but are not images.
  return '__MACOSX/' in path or path.rsplit('/', 1)[-1].startswith('._')


class FileIndex:
  """Finds files by base name in folders and zip archives, reads them lazily.

  Images are looked up by the name the metadata gives (e.g. `ISIC_0024306`),
  wherever the distribution put them: directly in a zip, in a folder inside
  it, or in an unzipped folder. The first occurrence of a name wins, so a
  user who kept both the zip and its unzipped copy gets one of each image.
  `read` may be called from several threads: each opens its own handles.
  """

  def __init__(self):
    self._where: dict[str, tuple[str, str | None]] = {}
    self._local = threading.local()
    self._lock = threading.Lock()
    self._open: list[zipfile.ZipFile] = []
    self.sources: list[str] = []

  def add_dir(self, root: str, accept: Callable[[str], bool]) -> list[str]:
    """Indexes files under `root` whose path relative to `root` is accepted.

    Returns the accepted base names (also those already indexed elsewhere).
    """
    self.sources.append(root + os.sep)
    added = []
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      for filename in sorted(filenames):
        path = os.path.join(dirpath, filename)
        relpath = os.path.relpath(path, root).replace(os.sep, '/')
        if not _is_junk(relpath) and accept(relpath):
          self._where.setdefault(filename, (path, None))
          added.append(filename)
    return added

  def add_zip(self, path: str, accept: Callable[[str], bool]) -> list[str]:
    """Indexes the accepted members of zip `path` (reads only its directory).

    Returns the accepted base names (also those already indexed elsewhere).
    """
    self.sources.append(path)
    archive = self._zip(path)
    added = []
    for info in archive.infolist():
      if info.is_dir() or _is_junk(info.filename) or not accept(info.filename):
        continue
      name = info.filename.rsplit('/', 1)[-1]
      self._where.setdefault(name, (path, info.filename))
      added.append(name)
    return added

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def __len__(self) -> int:
    return len(self._where)

  def names(self) -> list[str]:
    return sorted(self._where)

  def location(self, name: str) -> str:
    """Where `name` lives, for error messages ('a.zip:dir/x.png' or a path)."""
    container, member = self._where[name]
    return container if member is None else f'{container}:{member}'

  def _zip(self, path: str) -> zipfile.ZipFile:
    """This thread's handle on zip `path`."""
    handles = self._local.__dict__.setdefault('zips', {})
    if path not in handles:
      try:
        handles[path] = zipfile.ZipFile(path)
      except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f'{path}: not a readable zip archive ({e}); '
                        'download it again') from e
      with self._lock:
        self._open.append(handles[path])
    return handles[path]

  def read(self, name: str) -> bytes:
    container, member = self._where[name]
    try:
      if member is None:
        with open(container, 'rb') as f:
          return f.read()
      return self._zip(container).read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise DataError(f'{self.location(name)}: cannot read ({e}); the archive '
                      'may be truncated, download it again') from e

  def close(self) -> None:
    with self._lock:
      for archive in self._open:
        archive.close()
      self._open.clear()
    self._local = threading.local()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# Key under which `read_table` stores each row's line number (for errors).
LINE = '__line__'


def read_table(data: bytes, *, source: str,
               required: Sequence[str]) -> list[dict]:
  """Rows of a CSV or tab-separated file, checking the header.

  Each row maps column names to stripped values, plus `LINE` to its line.

  The delimiter is taken from the header line, because Harvard Dataverse
  serves HAM10000's metadata as a tab-separated `.tab` while Kaggle copies
  use `.csv`.
  """
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise DataError(f'{source}: not a UTF-8 text table ({e})') from e
  header_line = text.split('\n', 1)[0]
  delimiter = '\t' if '\t' in header_line else ','
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter)
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise DataError(f'{source}: empty file; expected a header with columns '
                    f'{", ".join(required)}') from None
  missing = [c for c in required if c not in header]
  if missing:
    raise DataError(
        f'{source}: expected columns {", ".join(required)}; missing '
        f'{", ".join(missing)} (found {", ".join(header) or "none"})')
  rows = []
  for line_no, values in enumerate(reader, start=2):
    if not any(v.strip() for v in values):
      continue
    if len(values) != len(header):
      raise DataError(f'{source}, line {line_no}: expected {len(header)} '
                      f'fields, found {len(values)}')
    row = {h: v.strip() for h, v in zip(header, values)}
    row[LINE] = line_no
    rows.append(row)
  if not rows:
    raise DataError(f'{source}: no data rows after the header')
  return rows


def check_image(data: bytes, *, source: str,
                max_short_side: int | None = None,
                reencode_format: str | None = None) -> bytes:
  """Encoded RGB bytes of a validated image.

  The image is fully decoded, so truncated or corrupt files fail here, while
  the dataset is built, rather than in a training worker later. Images that
  are not 8-bit RGB (palette, RGBA, grayscale PNGs) are converted, because
  readers decode the stored bytes as they are and expect 3 channels.
  `max_short_side` shrinks large images; they are re-encoded in
  `reencode_format` (default: PNG, lossless).
  """
  try:
    with Image.open(io.BytesIO(data)) as original:
      original.load()
      image = original
      if image.mode != 'RGB':
        image = image.convert('RGB')
      if max_short_side and min(image.size) > max_short_side:
        scale = max_short_side / min(image.size)
        size = tuple(max(1, round(s * scale)) for s in image.size)
        image = image.resize(size, Image.BICUBIC)
      if image is original and original.format in ('PNG', 'JPEG'):
        return data
      fmt = reencode_format or 'PNG'
      out = io.BytesIO()
      image.save(out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
      return out.getvalue()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    # PIL's message may embed the repr of our BytesIO; drop it.
    reason = str(e).split(' <_io.')[0]
    raise DataError(f'{source}: not a decodable image ({reason}); expected a '
                    'valid PNG or JPEG file, download it again') from e


def stratified_split(labels: Sequence, fraction: float, *, seed: int,
                     groups: Sequence | None = None) -> tuple[np.ndarray,
                                                              np.ndarray]:
  """Indices (kept, held) with about `fraction` of the items held out.

  Stratified by label: each label's share of held-out items is close to
  `fraction`. With `groups`, whole groups are held out (a group takes the
  most common label of its items), so no group appears on both sides. The
  rounding remainder is carried from one label to the next, so the total is
  close to `fraction` even when each label has few items. Deterministic for
  a seed and independent of the order of the input.
  """
  labels = list(labels)
  groups = list(range(len(labels))) if groups is None else list(groups)
  members = collections.defaultdict(list)
  for i, g in enumerate(groups):
    members[g].append(i)
  by_label = collections.defaultdict(list)
  for g in sorted(members, key=str):
    counts = collections.Counter(labels[i] for i in members[g])
    label = min(counts, key=lambda lab: (-counts[lab], str(lab)))
    by_label[label].append(g)
  rng = np.random.default_rng(seed)
  held, carry = [], 0.0
  for label in sorted(by_label, key=str):
    label_groups = by_label[label]
    order = rng.permutation(len(label_groups))
    target = fraction * sum(len(members[g]) for g in label_groups) + carry
    taken = 0
    for j in order:
      size = len(members[label_groups[j]])
      # Take a group when that brings the count closer to the target.
      if taken + size / 2 <= target:
        held.extend(members[label_groups[j]])
        taken += size
    carry = target - taken
  held_set = set(held)
  kept = np.array([i for i in range(len(labels)) if i not in held_set], int)
  return kept, np.array(sorted(held_set), int)
