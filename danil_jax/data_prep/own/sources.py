"""A user's folder or CSV read into labelled records, checked, fingerprinted.

Two layouts:
  * a folder: DIR/<class>/<images> (class = the subfolder's name; images
    may sit in deeper subfolders, e.g. one per patient), or
    DIR/{train,validation,test}/<class>/... for given splits;
  * a CSV or TSV: a path column (relative to the table's folder, or
    absolute), a label column, optional group and split columns.

Everything that can be checked without decoding an image is checked here,
before anything is built, and each problem is a named `DataError` listing
the first offending files or rows and their count: a missing file, an
unknown label, an empty class, a single class, a duplicate path.

The fingerprint (paths, sizes, modification times, labels, groups, splits
and the table's hash) is what the built data set is compared with to tell
that the source changed since the build: cheap (a stat per file), and it
catches files added, removed, replaced or relabelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Sequence

from danil_jax.data_prep import common
from danil_jax.data_prep.own import images

SPLITS = ('train', 'validation', 'test')
SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'validation':
                 'validation', 'val': 'validation', 'valid': 'validation',
                 'test': 'test', 'testing': 'test'}
SHOWN = 10  # offending files or rows listed in an error


class EmptySource(common.DataError):
  """No folder, no table, or no image in it."""


class MissingFiles(common.DataError):
  """Table rows whose image file does not exist."""


class UnknownLabels(common.DataError):
  """Labels outside config.dataset.class_names, or rows without a label."""


class EmptyClasses(common.DataError):
  """A class with no image."""


class TooFewClasses(common.DataError):
  """Fewer than two classes: nothing to classify."""


class DuplicatePaths(common.DataError):
  """The same image file listed twice."""


class BadRows(common.DataError):
  """Rows with a value the layout does not allow (split, group)."""


def listing(items: Sequence[str], what: str) -> str:
  """'3 rows: a; b; c' with the first SHOWN items and the count."""
  shown = '; '.join(str(i) for i in items[:SHOWN])
  more = f'; ... ({len(items) - SHOWN} more)' if len(items) > SHOWN else ''
  return f'{len(items)} {what}: {shown}{more}'


@dataclasses.dataclass
class Record:
  path: str  # as the user wrote it (folder: relative to DIR, '/'-separated)
  file: str  # absolute
  label: str
  group: str  # patient/lesion/slide; '' = the image is its own group
  split: str  # given split, '' if none
  where: str  # for messages: the path, or 'TABLE, line N'
  size: int = 0
  mtime_ns: int = 0


@dataclasses.dataclass
class Source:
  records: list[Record]
  class_names: list[str]
  table_sha256: str  # '' for a folder
  given_splits: bool

  def manifest(self) -> dict:
    """What the fingerprint covers, kept beside the built data set so that
    a later change can be described, not only detected."""
    return {'table_sha256': self.table_sha256,
            'class_names': self.class_names,
            'files': {r.path: [r.size, r.mtime_ns, r.label, r.group, r.split]
                      for r in self.records}}

  def fingerprint(self) -> str:
    return fingerprint(self.manifest())


def fingerprint(manifest: dict) -> str:
  text = json.dumps(manifest, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()


def describe_change(old: dict, new: dict) -> str:
  """What differs between two manifests, e.g. '2 files added (a.png, ...)'."""
  before, after = old['files'], new['files']
  parts = []

  def part(paths, what):
    if paths:
      shown = ', '.join(paths[:3]) + (', ...' if len(paths) > 3 else '')
      parts.append(f'{len(paths)} {what} ({shown})')

  common_paths = sorted(set(before) & set(after))
  part(sorted(set(after) - set(before)), 'file(s) added')
  part(sorted(set(before) - set(after)), 'file(s) removed')
  part([p for p in common_paths if before[p][:2] != after[p][:2]],
       'file(s) modified')
  part([p for p in common_paths if before[p][2] != after[p][2]],
       'file(s) relabelled')
  part([p for p in common_paths if before[p][3:] != after[p][3:]],
       'file(s) with another group or split')
  if old['class_names'] != new['class_names']:
    parts.append(f'classes {old["class_names"]} -> {new["class_names"]}')
  if not parts and old['table_sha256'] != new['table_sha256']:
    parts.append('the table was edited (no image, label, group or split '
                 'changed)')
  return '; '.join(parts) or 'nothing'


def _class_order(labels: set[str], given: Sequence[str]) -> list[str]:
  if given:
    return list(given)
  # Numeric labels in numeric order ('2' before '10').
  return sorted(labels, key=lambda s: (0, int(s), s) if re.fullmatch(
      r'-?\d+', s) else (1, 0, s))


def _check_classes(records: list[Record], given: Sequence[str], source: str,
                   empty: Sequence[str] = ()) -> list[str]:
  unknown = [f'{r.where} ({r.label!r})' for r in records
             if given and r.label not in given]
  if unknown:
    raise UnknownLabels(
        f'{source}: labels outside config.dataset.class_names '
        f'{list(given)}: ' + listing(unknown, 'image(s)'))
  names = _class_order({r.label for r in records}, given)
  present = {r.label for r in records}
  empty = sorted(set(empty) | {n for n in names if n not in present})
  if empty:
    raise EmptyClasses(
        f'{source}: ' + listing(empty, 'class(es) without any image') +
        '; expected every class to have images (remove it from '
        'config.dataset.class_names, or add its images)')
  if len(names) < 2:
    raise TooFewClasses(
        f'{source}: only one class, {names}; expected at least two to '
        'classify')
  return names


def _stat(record: Record) -> bool:
  try:
    stat = os.stat(record.file)
  except OSError:
    return False
  record.size, record.mtime_ns = stat.st_size, stat.st_mtime_ns
  return os.path.isfile(record.file)


def _is_junk(name: str) -> bool:
  return name.startswith('.') or name.lower() in ('thumbs.db', 'desktop.ini')


def _images_under(folder: str) -> list[str]:
  """Image files below `folder`, sorted, hidden files and others skipped."""
  found = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not _is_junk(d))
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      if not _is_junk(name) and (
          images.has_image_extension(name) or
          ('.' not in name and images.is_dicom_file(path))):
        found.append(path)
  return found


def _subdirs(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if not _is_junk(n)
                and os.path.isdir(os.path.join(folder, n)))


def _apply_group_regex(records: list[Record], pattern: str,
                       source: str) -> None:
  regex = re.compile(pattern)
  unmatched = []
  for record in records:
    match = regex.search(record.path)
    if match is None:
      unmatched.append(record.where)
    else:
      record.group = match.group(1) if regex.groups else match.group(0)
  if unmatched:
    raise BadRows(f'{source}: config.dataset.own.group_regex {pattern!r} '
                  'finds no group in ' + listing(unmatched, 'path(s)'))


def scan_folder(root: str, class_names: Sequence[str] = (),
                group_regex: str = '') -> Source:
  """Layout (a): DIR/<class>/... or DIR/{train,validation,test}/<class>/..."""
  if not os.path.isdir(root):
    raise EmptySource(f'{root}: no such folder; expected config.dataset.'
                      'manual_dir to be DIR/<class>/<images> or '
                      'DIR/{train,validation,test}/<class>/<images>')
  top = _subdirs(root)
  splits = {d: SPLIT_ALIASES[d.lower()] for d in top
            if d.lower() in SPLIT_ALIASES}
  given = 'train' in splits.values()
  if given and len(splits) < len(top):
    raise EmptySource(
        f'{root}: holds split folders {sorted(splits)} and others '
        f'{sorted(set(top) - set(splits))}; expected either '
        'DIR/{train,validation,test}/<class>/ or DIR/<class>/, not both')
  loose = [p for p in _images_under(root)
           if os.path.dirname(p) == root or
           (given and os.path.dirname(os.path.dirname(p)) == root)]
  if loose:
    raise EmptySource(f'{root}: images outside a class folder have no '
                      'label: ' + listing(loose, 'file(s)'))
  records, empty = [], []
  for split_dir in (sorted(splits) if given else ['']):
    base = os.path.join(root, split_dir) if split_dir else root
    for label in _subdirs(base):
      files = _images_under(os.path.join(base, label))
      if not files and not given:
        empty.append(label)
      for file in files:
        path = os.path.relpath(file, root).replace(os.sep, '/')
        records.append(Record(path, file, label, '', splits.get(split_dir, ''),
                              where=path))
  if not records:
    raise EmptySource(
        f'{root}: no image files (extensions '
        f'{", ".join(images.EXTENSIONS)}, or DICOM without one) in class '
        'subfolders; expected DIR/<class>/<images>')
  for record in records:
    _stat(record)
  if group_regex:
    _apply_group_regex(records, group_regex, root)
  names = _check_classes(records, class_names, root, empty)
  return Source(records, names, '', given)


def scan_table(table: str, *, columns: dict[str, str],
               class_names: Sequence[str] = (),
               group_regex: str = '') -> Source:
  """Layout (b): a CSV/TSV with columns path, label[, group][, split].

  `columns` maps 'path', 'label', 'group', 'split' to the table's names;
  a group or split column absent from the table is no error only under its
  default name (config.dataset.own's `*_column` keys).
  """
  try:
    with open(table, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise EmptySource(f'{table}: cannot read the table given as '
                      f'config.dataset.csv ({e.strerror})') from None
  required = [columns['path'], columns['label']] + [
      columns[k] for k in ('group', 'split') if columns[k] != k]
  rows = common.read_table(data, source=table, required=required)
  folder = os.path.dirname(os.path.abspath(table))
  records, missing, no_label, bad = [], [], [], []
  for row in rows:
    where = f'{table}, line {row[common.LINE]}'
    path = row[columns['path']]
    file = os.path.normpath(os.path.join(folder, os.path.expanduser(path)))
    record = Record(path, file, row[columns['label']],
                    row.get(columns['group'], ''),
                    row.get(columns['split'], ''), where)
    if not record.label:
      no_label.append(where)
    if columns['split'] in row:
      split = SPLIT_ALIASES.get(record.split.lower())
      if split is None:
        bad.append(f'{where} (split {record.split!r})')
      record.split = split or ''
    if columns['group'] in row and not record.group:
      bad.append(f'{where} (empty {columns["group"]})')
    if not path or not _stat(record):
      missing.append(f'{where} ({path or "empty path"})')
    records.append(record)
  if missing:
    raise MissingFiles(f'{table}: rows whose file does not exist (paths are '
                       f'relative to {folder}): ' +
                       listing(missing, 'row(s)'))
  if no_label:
    raise UnknownLabels(f'{table}: rows with an empty '
                        f'{columns["label"]!r}: ' + listing(no_label, 'row(s)'))
  if bad:
    raise BadRows(f'{table}: expected splits {"/".join(SPLITS)} and a '
                  'group on every row: ' + listing(bad, 'row(s)'))
  by_file = {}
  for record in records:
    by_file.setdefault(record.file, []).append(record.where.rsplit(' ', 1)[1])
  duplicates = [f'{f} (lines {", ".join(lines)})'
                for f, lines in by_file.items() if len(lines) > 1]
  if duplicates:
    raise DuplicatePaths(f'{table}: the same file on several rows: ' +
                         listing(duplicates, 'file(s)') +
                         '; expected each image once')
  if group_regex and columns['group'] not in rows[0]:
    _apply_group_regex(records, group_regex, table)
  names = _check_classes(records, class_names, table)
  return Source(records, names, hashlib.sha256(data).hexdigest(),
                given_splits=any(r.split for r in records))
