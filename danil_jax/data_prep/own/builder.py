"""The TFDS builder of a user's folder or CSV (`config.dataset.name='folder'`).

Each source (folder or table, with the options that change what is built)
is its own builder config, named after the source and a hash of those
options, so two data sets, or one split two ways, never overwrite each
other. The scan (sources.py) and the splits (splits.py) are done before a
single image is decoded; images are then decoded, validated and converted
in worker processes, a bounded number ahead of the writer, which streams
them to disk: memory stays flat whatever the size of the data set.

Beside the array_record files the build writes `splits.csv` (path, label,
group, split of every image kept), `source.json` (the manifest whose
fingerprint later tells that the source changed) and, with skip_bad,
`skipped.csv` (the unreadable files and why). TFDS builds in a temporary
folder renamed on success: a failed build leaves nothing that reads as
built.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
from typing import Iterator

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
import tqdm

from danil_jax.data_prep import common
from danil_jax.data_prep.own import images
from danil_jax.data_prep.own import sources
from danil_jax.data_prep.own import splits as splits_lib

MANIFEST = 'source.json'
SPLITS_CSV = 'splits.csv'
SKIPPED_CSV = 'skipped.csv'
_JOBS_PER_TASK = 16  # files a worker decodes per round trip


class UnreadableImages(common.DataError):
  """Image files that do not decode (the build lists all of them)."""


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """A source and its build options (dataset.Options.build_options)."""
  options: str = '{}'  # JSON, so that the config stays hashable and plain


def _parallel(jobs: list, workers: int) -> Iterator:
  """images.encode_file over `jobs`, in order, on `workers` processes.

  Spawned, not forked: the caller may hold JAX's threads, which a fork
  copies in an unknown state. At most a few tasks per worker are in
  flight, so decoded images never pile up in memory.
  """
  if workers <= 1 or len(jobs) < 2 * _JOBS_PER_TASK:
    yield from map(images.encode_file, jobs)
    return
  chunks = iter(lambda it=iter(jobs): list(
      itertools.islice(it, _JOBS_PER_TASK)), [])
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers,
                                              mp_context=context) as pool:
    pending = collections.deque()
    for chunk in chunks:
      pending.append(pool.submit(images.encode_files, chunk))
      if len(pending) >= 3 * workers:
        yield from pending.popleft().result()
    while pending:
      yield from pending.popleft().result()


class Folder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of a user's folder or CSV, with their class, group and split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def __init__(self, *, source: sources.Source | None = None, **kwargs):
    # The scan of the source, made by the caller; None when only reading a
    # built data set (its class names come from the stored features).
    self._source = source
    self._bad: list[tuple[sources.Record, str]] = []
    self._kept: dict[str, list[sources.Record]] = {}
    super().__init__(**kwargs)

  @property
  def options(self) -> dict:
    return json.loads(self.builder_config.options)

  @property
  def fingerprint(self) -> str | None:
    """The built source's fingerprint (None before the build): what a run
    pins to tell later that its data set was rebuilt."""
    manifest = read_manifest(self) if self.is_prepared() else None
    return manifest and manifest.get('fingerprint')

  def _info(self) -> tfds.core.DatasetInfo:
    label = (tfds.features.ClassLabel(names=self._source.class_names)
             if self._source else tfds.features.ClassLabel())
    return self.dataset_info_from_configs(
        description='Images of a folder or CSV (danil_jax/data_prep/own).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': label,
            'filename': tfds.features.Text(),  # the path as in splits.csv
            'group': tfds.features.Text(),  # patient/lesion/slide, or ''
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # the files are where the user keeps them
    if self._source is None:
      raise common.DataError('the Folder builder needs the scanned source '
                             'to build (use data_prep.own.dataset.prepare)')
    options = self.options
    made = splits_lib.make_splits(
        self._source, test_fraction=options['test_fraction'],
        validation_fraction=options['validation_fraction'],
        seed=options['seed'],
        allow_shared_groups=options['allow_shared_groups'],
        name=options['source'])
    return {name: self._generate_examples(name, records)
            for name, records in made.items()}

  def _generate_examples(self, split: str, records: list[sources.Record]):
    options = self.options
    image_options = dict(rescale=options['rescale'],
                         window=tuple(options['dicom_window']),
                         max_short_side=options['max_short_side'])
    jobs = [(r.file, image_options) for r in records]
    kept = self._kept.setdefault(split, [])
    results = tqdm.tqdm(_parallel(jobs, options['workers']),
                        total=len(jobs), desc=f'{split} images',
                        unit=' images', mininterval=2)
    for record, (data, error) in zip(records, results):
      if error is not None:
        self._bad.append((record, error))
        continue
      kept.append(record)
      yield record.path, {'image': data, 'label': record.label,
                          'filename': record.path, 'group': record.group}

  def _generate_splits(self, dl_manager, download_config):
    """Writes each split as it is decoded, one array_record file each.

    TFDS's own writer holds up to 1 GB of examples in memory and then
    spills them to bucket files through TensorFlow, which this project
    does without; the splits are already in a deterministic order and the
    train loader shuffles, so the examples go straight to disk.
    """
    del download_config
    features = self.info.features
    serializer = example_serializer.ExampleSerializer(
        features.get_serialized_info())
    writer = self._example_writer()
    infos = []
    for split, examples in self._split_generators(dl_manager).items():
      template = self._get_filename_template(split_name=split)
      path = template.sharded_filepath(shard_index=0, num_shards=1)
      sizes = []

      def serialized(examples=examples, sizes=sizes):
        for key, example in examples:
          data = serializer.serialize_example(features.encode_example(example))
          sizes.append(len(data))
          yield key, data

      writer.write(path, serialized())
      infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[len(sizes)], num_bytes=sum(sizes),
          filename_template=template))
    return infos

  def _download_and_prepare(self, dl_manager, download_config, **kwargs):
    super()._download_and_prepare(dl_manager, download_config, **kwargs)
    # Still inside TFDS's temporary folder: these files appear with the
    # data set or not at all.
    if self._bad and not self.options['skip_bad']:
      raise UnreadableImages(
          f'{self.options["source"]}: ' + sources.listing(
              [e for _, e in self._bad], 'unreadable image file(s)') +
          '. Fix or remove them, or set config.dataset.own.skip_bad=True '
          f'to leave them out (they are then listed in {SKIPPED_CSV})')
    data_dir = epath.Path(self.data_dir)
    kept = {s: self._kept[s] for s in sources.SPLITS if self._kept.get(s)}
    empty = [s for s in self._kept if not self._kept[s]]
    if empty:
      raise UnreadableImages(f'{self.options["source"]}: no readable image '
                             f'left in split(s) {", ".join(empty)}')
    splits_lib.write_splits_csv(data_dir / SPLITS_CSV, kept)
    if self._bad:
      splits_lib.write_csv(data_dir / SKIPPED_CSV, ['path', 'reason'],
                           ((r.path, e) for r, e in self._bad))
    manifest = self._source.manifest()
    manifest['fingerprint'] = self._source.fingerprint()
    (data_dir / MANIFEST).write_text(json.dumps(manifest))
    print(splits_lib.counts_table(kept, self._source.class_names))
    if self._bad:
      print(f'skipped {len(self._bad)} unreadable file(s), listed in '
            f'{SKIPPED_CSV} beside the data set')


def read_manifest(builder: Folder) -> dict | None:
  path = epath.Path(builder.data_dir) / MANIFEST
  return json.loads(path.read_text()) if path.exists() else None
