"""A trained run read back from its workdir, and what the commands do with it.

`load` rebuilds the model, preprocessing and data set of
`WORKDIR/config.json` and restores a checkpoint's train state read-only: the
run's own checkpoints, logs and data iterator are never written. Then
`evaluate_run` (danil_jax.evaluate), `predict_files` (danil_jax.predict) and
`compute_maps` (danil_jax.response_maps); the command modules hold only
their flags, so tests call these in one process.

On several hosts (the commands' `--config.distributed=True`, runtime/cli.py)
every host restores the checkpoint process 0 resolved, reads and scores only
its slice of every global batch, and gets every result back replicated;
process 0 alone writes and prints. The numbers are those of one process.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import hashlib
import json
import os
from typing import Any, Callable

from etils import epath
from flax import struct
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import map_distance as map_distance_lib
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.evaluation import scoring
from danil_jax.method import intrinsic_maps
from danil_jax.runtime import augment
from danil_jax.runtime import checkpointing
from danil_jax.runtime import data_pin
from danil_jax.runtime import ema
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import run_builder
from danil_jax.runtime import tta as tta_lib
from danil_jax import data_prep
from danil_jax.data_prep.own import images as own_images


@struct.dataclass
class ModelState:
  """A trained model's weights as eval_step and the maps read them; `ema`
  the weight average where the run keeps one (runtime/ema.py)."""
  apply_fn: Callable = struct.field(pytree_node=False)
  params: Any = None
  batch_stats: Any = None
  ema: Any = None


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  builder: object
  class_names: list
  model: object
  pre: input_pipeline.Preprocessing
  mesh: object
  state: ModelState
  step: int
  checkpoint: str  # 'best', 'last' or the step, as asked
  eval_step: object  # jitted scoring.eval_step over the mesh, with `tta`
  tta: str  # test-time augmentation (danil_jax.runtime.tta)
  weights: str = 'raw'  # in state.params/batch_stats: 'ema' or 'raw'


def read_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, with the keys a run from an older danil-jax lacks
  taken from configs/default.py."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise ValueError(f'{path} does not exist: is {workdir} a run directory '
                     '(python -m danil_jax.main --workdir=...)?')
  from danil_jax.configs import default  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(_with_missing_keys(
      json.loads(path.read_text()), default.get_config().to_dict()))


def _with_missing_keys(saved: dict, defaults: dict) -> dict:
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_missing_keys(merged[key], value)
  return merged


def load(workdir: str, checkpoint: str = 'last', *,
         need_data: bool = True, weights: str | None = None,
         tta: str | None = None) -> TrainedRun:
  """The run in `workdir` with the model of `checkpoint` restored.

  Without `need_data` (predicting on files) the data set is not built or
  read, and `builder` is None: the class names come from WORKDIR/data.json
  where the run pinned its data, else from the data set's builder.
  `weights`: 'ema' or 'raw' (ema.py), None for those the run reports
  (ema.default_weights). `tta`: the test-time augmentation of its eval
  step; None takes the run's config.eval.tta.
  """
  workdir = checkpointing.absolute_path(workdir)
  config = read_config(workdir)
  has_ema = config.optim.ema_decay > 0
  weights = weights or ema.default_weights(config)
  if weights not in ema.WEIGHTS:
    raise ValueError(f'--weights must be one of {list(ema.WEIGHTS)}, got '
                     f'{weights!r}')
  if weights == 'ema' and not has_ema:
    raise ValueError(f'--weights=ema: the run in {workdir} keeps no weight '
                     'EMA (its config.optim.ema_decay is 0); use '
                     '--weights=raw')
  if tta is None:
    tta = config.eval.tta
  tta_lib.check(tta, '--tta')
  # A run still training may add a checkpoint between two hosts' looks:
  # every host restores the one process 0 found.
  directory, step = multihost.chiefs_value(
      'checkpoint', best_checkpoint.find_checkpoint(workdir, checkpoint))
  if need_data and config.dataset.name == data_prep.FOLDER:
    # A folder or CSV that changed since the run trained is named, never
    # rebuilt under the run: the run's data set stays as it trained on it.
    config.dataset.own.on_change = 'refuse'
  if need_data:
    data = run_builder.open_data(config, build=multihost.is_chief(),
                                 augment=False)
    data_pin.check(workdir, data.builder)
    builder, class_names, pre = data.builder, data.class_names, data.pre
  else:
    builder, pre = None, run_builder.preprocessing(config, augment=False)
    class_names = data_pin.class_names(workdir) or list(
        data_prep.dataset_builder(config.dataset).info.features['label'].names)
  mesh = multihost.make_mesh()
  model = run_builder.create_model(config, len(class_names))
  state = ema.select(ModelState(model.apply, **restore_weights(
      directory, step, mesh)), weights)
  return TrainedRun(config=config, builder=builder, class_names=class_names,
                    model=model, pre=pre, mesh=mesh, state=state, step=step,
                    checkpoint=checkpoint,
                    eval_step=scoring.jit_eval_step(mesh, tta), tta=tta,
                    weights=weights)


def restore_weights(directory: str, step: int, mesh) -> dict:
  """Checkpoint `step`'s params, batch_stats and weight EMA (where it keeps
  one), replicated over `mesh`; shapes and dtypes from the checkpoint's own
  metadata, so no model is initialised and no optimiser built.
  """
  manager = checkpointing.manager_at(directory, read_only=True)
  try:
    # Every array of the checkpoint, as saved (orbax restores a whole item):
    # the optimiser state comes along, read and dropped.
    replicated = multihost.replicated(mesh)
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
        manager.item_metadata(step)['state'])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  finally:
    manager.close()
  return {k: restored[k] for k in ('params', 'batch_stats', ema.KEY)
          if k in restored}


def _predict_split(run: TrainedRun, split: str):
  return scoring.predict_split(
      run.eval_step, run.state, run.builder.as_data_source(split),
      pre=run.pre, global_batch_size=run.config.input.eval_batch_size,
      mesh=run.mesh, metadata=scoring.read_metadata(run.builder, split),
      num_workers=run.config.input.num_workers, tta=run.tta)


def split_maps(run: TrainedRun, split: str) -> dict:
  """map_distance.per_image of every example of `split`: ||A+ - A-||^2,
  y-, the top-2 margin, with the run's eval-mode model and weights."""
  return map_distance_lib.per_image(
      map_distance_lib.map_step(run.model.apply, run.mesh),
      {'params': run.state.params, 'batch_stats': run.state.batch_stats},
      run.builder.as_data_source(split), pre=run.pre,
      global_batch_size=run.config.input.eval_batch_size, mesh=run.mesh,
      num_workers=run.config.input.num_workers)


def evaluate_run(workdir: str, split: str = 'test', checkpoint: str = 'last',
                 weights: str | None = None, tta: str | None = None,
                 map_distance: bool = False) -> tuple[str, dict]:
  """Evaluates, calibrated on the run's validation split if it has one;
  returns the output directory and the metrics.

  The output directory is evaluation.output_name's, with `_<weights>` after
  the checkpoint where they are not those the run reports (as the trainer
  names them). `map_distance`: also each image's ||A+ - A-||^2
  (evaluation/map_distance.py), summarised in the metrics and per image in
  predictions.csv.
  """
  run = load(workdir, checkpoint, weights=weights, tta=tta)
  if split not in run.builder.info.splits:
    raise ValueError(f'--split={split!r}: {run.config.dataset.name} has '
                     f'splits {sorted(run.builder.info.splits)}')
  predictions = scoring.predict_calibrated(
      functools.partial(_predict_split, run), split,
      scoring.validation_split(run.config, run.builder.info.splits))
  metrics = dict(step=run.step, split=split, model=checkpoint,
                 weights=run.weights,
                 **scoring.report(predictions, run.class_names,
                                     run.config.eval))
  if map_distance:
    images = split_maps(run, split)
    metrics[map_distance_lib.KEY] = map_distance_lib.summary(images)
    predictions = dataclasses.replace(
        predictions, columns=map_distance_lib.columns(images,
                                                      run.class_names))
  model = checkpoint
  if run.weights != ema.default_weights(run.config):
    model += f'_{run.weights}'
  outdir = checkpointing.absolute_path(workdir) / 'eval' / (
      scoring.output_name(split, model, run.tta))
  if not multihost.is_chief():
    return str(outdir), metrics
  weights_note = (f', {run.weights} weights' if run.state.ema is not None
                  else '')
  scoring.write_outputs(
      outdir, predictions, metrics, run.class_names,
      title=f'{run.config.dataset.name} {split}, {checkpoint} model '
      f'(step {run.step}{weights_note})')
  print(f'{split} metrics of the {checkpoint} model (step {run.step}'
        f'{weights_note}):\n'
        + metrics_lib.format_report(metrics, run.class_names,
                                    run.config.eval.headline))
  if map_distance:
    print(map_distance_lib.format_summary(metrics[map_distance_lib.KEY]))
  print(f'wrote {outdir}')
  return str(outdir), metrics


def image_paths(pattern: str) -> list[str]:
  """The files `pattern` names: a file, a directory's files, or a glob."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    paths = [os.path.join(pattern, n) for n in os.listdir(pattern)]
    paths = [p for p in paths if os.path.isfile(p)]
  elif os.path.isfile(pattern):
    paths = [pattern]
  else:
    paths = [p for p in glob.glob(pattern) if os.path.isfile(p)]
  if not paths:
    raise ValueError(f'--images={pattern!r} matches no file')
  return sorted(paths)


def read_image(path: str, dataset=None):
  """uint8 HxWx3 RGB, or raises ValueError naming the file.

  Read as a folder data set's build reads it (danil_jax/data_prep/own/images.py:
  16-bit, DICOM windows, grayscale), with `dataset`'s (config.dataset)
  rescale and DICOM window where it has them.
  """
  own = dataset.get('own') if dataset is not None else None
  try:
    return own_images.read_rgb(
        path, rescale=own.rescale if own else 'minmax',
        window=tuple(own.dicom_window) if own else ())
  except OSError as e:
    raise ValueError(f'{path}: not a readable image ({e})') from None


def _this_hosts_positions(num_examples: int, global_batch_size: int,
                          mesh) -> list[list[int]]:
  """Per global batch, the positions (into the examples, padding past the
  end) that this host reads: its rows of each batch (multihost.host_slice),
  as in input_pipeline.eval_batches."""
  rows = multihost.host_slice(global_batch_size, mesh)
  return [[b * global_batch_size + j for j in range(rows.start, rows.stop)]
          for b in range(input_pipeline.num_eval_batches(
              num_examples, global_batch_size))]


def predict_files(run, paths: list[str], *, skip_bad: bool = False):
  """(rows of (path, probabilities [K]), unreadable files with reasons).

  Every host must list the same `paths` (else a ValueError names both
  lists' sizes); each reads and scores only its slice of every batch of
  eval_batch_size files and gets every row back. The unreadable files are
  those this host read; the others are left out of the rows all the same.
  """
  digest = hashlib.sha256('\n'.join(paths).encode()).hexdigest()[:16]
  multihost.same_on_every_host('predict_files', [len(paths), digest],
                               'the list of --images files (count, digest)')
  batch_size = run.config.input.eval_batch_size
  positions = _this_hosts_positions(len(paths), batch_size, run.mesh)
  images, bad = {}, []
  for i in (i for batch in positions for i in batch if i < len(paths)):
    try:
      images[i] = augment.eval_transform(
          read_image(paths[i], run.config.dataset), size=run.pre.size,
          mean=run.pre.mean, std=run.pre.std)
    except ValueError as e:
      bad.append(str(e))
  if bad and not skip_bad:
    raise ValueError(f'{len(bad)} unreadable file(s) (--skip_bad leaves them '
                     'out):\n  ' + '\n  '.join(bad))
  blank = np.zeros((run.pre.size, run.pre.size, 3), np.float32)
  rows = []
  for start, batch in zip(range(0, len(paths), batch_size), positions):
    # Padding and unreadable files are masked out, as in evaluation.
    local = dict(image=np.stack([images.get(i, blank) for i in batch]),
                 label=np.zeros(len(batch), np.int32),
                 mask=np.array([i in images for i in batch]))
    out = jax.device_get(run.eval_step(
        run.state, multihost.global_batch(local, run.mesh)))
    probabilities = np.asarray(out['probabilities'], np.float32)
    for row in np.flatnonzero(np.asarray(out['mask'], bool)):
      rows.append((paths[start + row], probabilities[row]))
  return rows, bad


def write_predictions_csv(path: str, rows, class_names) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['file', 'prediction'] + list(class_names))
    for file, probabilities in rows:
      writer.writerow([file, class_names[int(probabilities.argmax())]]
                      + [repr(float(p)) for p in probabilities])


def chosen_indices(split_size: int, num: int):
  return np.unique(np.linspace(0, split_size - 1, min(num, split_size))
                   .round().astype(int))


def near_miss_indices(run: TrainedRun, split: str, num: int) -> np.ndarray:
  """The `num` examples of `split` with the smallest top-2 probability
  margin under the run's model (map_distance.near_misses' order)."""
  margin = split_maps(run, split)['margin']
  return np.argsort(margin, kind='stable')[:num]


def compute_maps(run, split: str, num: int, indices=None) -> dict:
  """Preprocessed images, labels and the maps of the chosen examples:
  `indices` of the split, or `num` spread evenly over it.

  The chosen examples are padded to a multiple of the devices and sharded
  over them (each host preprocesses its slice); every host gets them all.
  """
  source = run.builder.as_data_source(split)
  if indices is None:
    indices = chosen_indices(len(source), num)
  indices = np.asarray(indices)
  padded = -(-len(indices) // run.mesh.size) * run.mesh.size
  (mine,) = _this_hosts_positions(padded, padded, run.mesh)
  blank = np.zeros((run.pre.size, run.pre.size, 3), np.float32)
  records = [source[int(indices[i])] if i < len(indices) else None
             for i in mine]
  local = dict(
      image=np.stack([blank if r is None else augment.eval_transform(
          r['image'], size=run.pre.size, mean=run.pre.mean, std=run.pre.std)
                      for r in records]),
      label=np.array([0 if r is None else r['label'] for r in records],
                     np.int32))
  batch = multihost.global_batch(local, run.mesh)

  def maps_fn(variables, images, labels):
    logits_fn = lambda x: run.model.apply(variables, x, train=False)
    return dict(images=images, labels=labels,
                **intrinsic_maps.response_maps(logits_fn, images, labels))

  replicated = multihost.replicated(run.mesh)
  data = multihost.data_sharding(run.mesh)
  maps = jax.device_get(jax.jit(
      maps_fn, in_shardings=(replicated, data, data),
      out_shardings=replicated)(
          {'params': run.state.params, 'batch_stats': run.state.batch_stats},
          batch['image'], batch['label']))
  return dict(indices=indices, **{k: np.asarray(v)[:len(indices)]
                                  for k, v in maps.items()})
