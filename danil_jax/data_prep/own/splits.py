"""Train/validation/test of a user's records: made, or given and checked.

Made (no split given): `test_fraction` and then `validation_fraction` of
the images held out, stratified by class and grouped (no patient, lesion or
slide in two splits), deterministic for the seed, by the same
`common.stratified_split` the paper's builders use. Given (split folders or
a split column): used as given, but a group found in two splits is a
`GroupLeakage` error listing the groups, unless `allow_shared_groups`; a
given set without validation (or test) gets one carved from its training
images the made way, because model selection needs one and must never look
at test.

Leakage is the classic silent error of medical imaging: a patient's images
in train and test inflate every metric. Hence grouped by default, and the
table of class counts per split printed and `splits.csv` written by the
build, for an audit.
"""

from __future__ import annotations

import collections
import csv
import io

from etils import epath
import numpy as np

from danil_jax.data_prep import common
from danil_jax.data_prep.own import sources


class GroupLeakage(common.DataError):
  """A group (patient, lesion, slide) in two given splits."""


class TooFewImages(common.DataError):
  """A class with too few images (groups) to appear in every split."""


def _group_of(record: sources.Record) -> str:
  return record.group or f'image:{record.path}'


def _carve(records, fraction: float, seed: int, class_names):
  """(kept, held): `fraction` of the images held out by whole groups,
  stratified; a class the rounding left out of `held` gets one of its
  groups moved there, so that every split scores every class."""
  kept, held = common.stratified_split(
      [r.label for r in records], fraction, seed=seed,
      groups=[_group_of(r) for r in records])
  kept = [records[i] for i in kept]
  held = [records[i] for i in held]
  rng = np.random.default_rng(seed)
  for label in class_names:
    if any(r.label == label for r in held):
      continue
    candidates = sorted({_group_of(r) for r in kept if r.label == label})
    if len(candidates) > 1:
      group = candidates[rng.integers(len(candidates))]
      held += [r for r in kept if _group_of(r) == group]
      kept = [r for r in kept if _group_of(r) != group]
  return kept, held


def _check_enough(records, made: list[str], class_names, source: str):
  """Each class needs a group for every split made and one for train."""
  groups = collections.defaultdict(set)
  for record in records:
    groups[record.label].add(_group_of(record))
  needed = len(made) + 1
  short = [f'{name} ({len(groups[name])})' for name in class_names
           if 0 < len(groups[name]) < needed]
  if short:
    raise TooFewImages(
        f'{source}: to make the {" and ".join(made)} split(s) every class '
        f'needs images of at least {needed} different groups (or images, '
        'without groups); ' + sources.listing(short, 'class(es) have fewer') +
        '. Add images, give the splits yourself, or set '
        'config.dataset.own.validation_fraction=0')


def _check_leakage(splits: dict, allow: bool, source: str) -> None:
  seen = collections.defaultdict(set)
  for name, records in splits.items():
    for record in records:
      if record.group:
        seen[record.group].add(name)
  shared = sorted(g for g, names in seen.items() if len(names) > 1)
  if shared and not allow:
    raise GroupLeakage(
        f'{source}: the given splits share groups, so the same patient '
        '(lesion, slide) would be trained on and tested on: ' +
        sources.listing([f'{g} ({"/".join(sorted(seen[g]))})'
                         for g in shared], 'group(s)') +
        '. Move their images into one split, or set '
        'config.dataset.own.allow_shared_groups=True to accept it')


def make_splits(source: sources.Source, *, test_fraction: float,
                validation_fraction: float, seed: int,
                allow_shared_groups: bool = False,
                name: str = 'the data') -> dict[str, list[sources.Record]]:
  """split name -> records (sorted by path), every split non-empty."""
  records = sorted(source.records, key=lambda r: r.path)
  if source.given_splits:
    splits = {s: [r for r in records if r.split == s]
              for s in sources.SPLITS}
    if not splits['train']:
      raise TooFewImages(f'{name}: the given splits have no training '
                         'image; expected a train split')
    _check_leakage(splits, allow_shared_groups, name)
    pool = splits['train']
    made = [s for s, f in (('test', test_fraction),
                           ('validation', validation_fraction))
            if not splits[s] and f > 0]
  else:
    pool = records
    made = ['test'] + (['validation'] if validation_fraction > 0 else [])
    splits = {}
  _check_enough(pool, made, source.class_names, name)
  remaining = 1.0
  for offset, split in enumerate(made):
    fraction = test_fraction if split == 'test' else validation_fraction
    pool, splits[split] = _carve(pool, min(fraction / remaining, 1.0),
                                 seed + offset, source.class_names)
    remaining -= fraction
  splits['train'] = pool
  for split in made + ['train']:
    labels = {r.label for r in splits[split]}
    absent = [c for c in source.class_names if c not in labels]
    if absent:
      raise TooFewImages(
          f'{name}: the {split} split would have no image of '
          f'{", ".join(absent)} (test_fraction {test_fraction}, '
          f'validation_fraction {validation_fraction}); add images of those '
          'classes, or give the splits yourself')
  return {s: splits[s] for s in sources.SPLITS if splits.get(s)}


def counts_table(splits: dict[str, list[sources.Record]],
                 class_names: list[str]) -> str:
  """Images per class (rows) and split (columns), with totals."""
  names = list(splits)
  counts = {s: collections.Counter(r.label for r in recs)
            for s, recs in splits.items()}
  width = max(len(c) for c in class_names + ['class', 'total'])
  lines = ['  '.join([f'{"class":<{width}}'] + [f'{s:>10}' for s in names] +
                     [f'{"total":>8}'])]
  for label in class_names + ['total']:
    row = [(sum(counts[s].values()) if label == 'total' else counts[s][label])
           for s in names]
    lines.append('  '.join([f'{label:<{width}}'] + [f'{n:>10}' for n in row]
                           + [f'{sum(row):>8}']))
  return '\n'.join(lines)


def write_splits_csv(path: epath.Path,
                     splits: dict[str, list[sources.Record]]) -> None:
  """path, label, group, split: one row per image kept in the data set."""
  write_csv(path, ['path', 'label', 'group', 'split'],
            ([r.path, r.label, r.group, split]
             for split, records in splits.items() for r in records))


def write_csv(path: epath.Path, header: list[str], rows) -> None:
  """A CSV file wherever epath reaches (a local or shared disk, a bucket)."""
  out = io.StringIO(newline='')
  writer = csv.writer(out)
  writer.writerow(header)
  writer.writerows(rows)
  path.write_text(out.getvalue())
