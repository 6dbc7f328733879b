"""A trained run read back from its workdir, and what the commands do with it.

`load` rebuilds the model, preprocessing and data set of
`WORKDIR/config.json` and restores a checkpoint's train state read-only: the
run's own checkpoints, logs and data iterator are never written. Then
`evaluate_run` (danil_jax.evaluate), `predict_files` (danil_jax.predict) and
`compute_maps` (danil_jax.response_maps); the command modules hold only
their flags, so tests call these in one process.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from etils import epath
from PIL import Image

import data_prep
from danil_jax import augment
from danil_jax import best_checkpoint
from danil_jax import checkpointing
from danil_jax import ema
from danil_jax import evaluation
from danil_jax import input_pipeline
from danil_jax import intrinsic_maps
from danil_jax import metrics as metrics_lib
from danil_jax import models
from danil_jax import sharding
from danil_jax import steps
from danil_jax import tta as tta_lib


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  builder: object
  class_names: list
  model: object
  pre: input_pipeline.Preprocessing
  mesh: object
  state: steps.TrainState
  step: int
  checkpoint: str  # 'best', 'last' or the step, as asked
  eval_step: object  # jitted steps.eval_step over the mesh, with `tta`
  tta: str  # test-time augmentation (danil_jax.tta)
  weights: str = 'raw'  # in state.params/batch_stats: 'ema' or 'raw'


def read_config(workdir) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise ValueError(f'{path} does not exist: is {workdir} a run directory '
                     '(python -m danil_jax.main --workdir=...)?')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  if 'eval' not in config:  # a run from before config.eval existed
    from configs import default  # pylint: disable=g-import-not-at-top
    config.eval = default.get_config().eval
  return config


def load(workdir: str, checkpoint: str = 'last', *,
         need_data: bool = True, weights: str | None = None,
         tta: str | None = None) -> TrainedRun:
  """The run in `workdir` with the model of `checkpoint` restored.

  Without `need_data` (predicting on files) the data set is not built or
  read: its builder only gives the class names. `weights`: 'ema' or 'raw'
  (ema.py), None for those the run reports (ema.default_weights). `tta`:
  the test-time augmentation of its eval step; None takes the run's
  config.eval.tta.
  """
  workdir = checkpointing.absolute_path(workdir)
  config = read_config(workdir)
  has_ema = config.optim.get('ema_decay', 0.0) > 0
  weights = weights or ema.default_weights(config)
  if weights not in ema.WEIGHTS:
    raise ValueError(f'--weights must be one of {list(ema.WEIGHTS)}, got '
                     f'{weights!r}')
  if weights == 'ema' and not has_ema:
    raise ValueError(f'--weights=ema: the run in {workdir} keeps no weight '
                     'EMA (its config.optim.ema_decay is 0); use '
                     '--weights=raw')
  if tta is None:
    tta = config.eval.get('tta', 'none')  # absent in runs from before it
  tta_lib.check(tta, '--tta')
  directory, step = best_checkpoint.find_checkpoint(workdir, checkpoint)
  if need_data:
    builder = data_prep.prepare(
        config.dataset.name, data_dir=config.dataset.data_dir,
        manual_dir=config.dataset.manual_dir or None,
        config=config.dataset.builder_config or None)
  else:
    builder = data_prep.get_builder(
        config.dataset.name, data_dir=config.dataset.data_dir,
        config=config.dataset.builder_config or None)
  class_names = list(builder.info.features['label'].names)
  mesh = sharding.make_mesh()
  model_info = models.info(config.model.name)
  pre = input_pipeline.Preprocessing(
      size=config.dataset.image_size or model_info.input_size,
      mean=model_info.mean, std=model_info.std, augment=False)
  model = models.create(config.model.name, len(class_names),
                        dtype=jnp.dtype(config.model.dtype))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, pre.size, pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=sharding.replicated(mesh))(init_rng, dummy)
  # The optimiser only gives the checkpoint's structure; its schedule's
  # values do not matter here.
  tx = steps.make_optimizer(config.optim, 1, config.num_epochs)
  state = sharding.replicate(
      steps.create_train_state(model, variables, tx, state_rng,
                               ema=has_ema), mesh)
  state = ema.select(steps.state_from_checkpoint(
      state, best_checkpoint.restore_state(
          directory, step, steps.state_to_checkpoint(state))), weights)
  return TrainedRun(config=config, builder=builder, class_names=class_names,
                    model=model, pre=pre, mesh=mesh, state=state, step=step,
                    checkpoint=checkpoint,
                    eval_step=evaluation.jit_eval_step(mesh, tta), tta=tta,
                    weights=weights)


def _predict_split(run: TrainedRun, split: str):
  return evaluation.predict_split(
      run.eval_step, run.state, run.builder.as_data_source(split),
      pre=run.pre, global_batch_size=run.config.input.eval_batch_size,
      mesh=run.mesh, metadata=evaluation.read_metadata(run.builder, split),
      num_workers=run.config.input.num_workers, tta=run.tta)


def evaluate_run(workdir: str, split: str = 'test', checkpoint: str = 'last',
                 weights: str | None = None,
                 tta: str | None = None) -> tuple[str, dict]:
  """Evaluates, calibrated on the run's validation split if it has one;
  returns the output directory and the metrics.

  The output directory is evaluation.output_name's, with `_<weights>` after
  the checkpoint where they are not those the run reports (as the trainer
  names them).
  """
  run = load(workdir, checkpoint, weights=weights, tta=tta)
  if split not in run.builder.info.splits:
    raise ValueError(f'--split={split!r}: {run.config.dataset.name} has '
                     f'splits {sorted(run.builder.info.splits)}')
  predictions = evaluation.predict_calibrated(
      functools.partial(_predict_split, run), split,
      evaluation.validation_split(run.config, run.builder.info.splits))
  metrics = dict(step=run.step, split=split, model=checkpoint,
                 weights=run.weights,
                 **evaluation.report(predictions, run.class_names,
                                     run.config.eval))
  model = checkpoint
  if run.weights != ema.default_weights(run.config):
    model += f'_{run.weights}'
  outdir = checkpointing.absolute_path(workdir) / 'eval' / (
      evaluation.output_name(split, model, run.tta))
  weights_note = (f', {run.weights} weights' if run.state.ema is not None
                  else '')
  evaluation.write_outputs(
      outdir, predictions, metrics, run.class_names,
      title=f'{run.config.dataset.name} {split}, {checkpoint} model '
      f'(step {run.step}{weights_note})')
  print(f'{split} metrics of the {checkpoint} model (step {run.step}'
        f'{weights_note}):\n'
        + metrics_lib.format_report(metrics, run.class_names,
                                    run.config.eval.headline))
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


def read_image(path: str):
  """uint8 HxWx3 RGB, or raises ValueError naming the file."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: not a readable image ({e})') from None


def predict_files(run, paths: list[str], *, skip_bad: bool = False):
  """(rows of (path, probabilities [K]), unreadable files with reasons)."""
  images, kept, bad = [], [], []
  for path in paths:
    try:
      image = read_image(path)
    except ValueError as e:
      bad.append(str(e))
      continue
    images.append(augment.eval_transform(image, size=run.pre.size,
                                         mean=run.pre.mean, std=run.pre.std))
    kept.append(path)
  if bad and not skip_bad:
    raise ValueError(f'{len(bad)} unreadable file(s) (--skip_bad leaves them '
                     'out):\n  ' + '\n  '.join(bad))
  batch_size = run.config.input.eval_batch_size
  size = run.pre.size
  probabilities = []
  for start in range(0, len(images), batch_size):
    chunk = np.stack(images[start:start + batch_size])
    n = len(chunk)
    # Padded to the evaluation batch, masked, as in evaluation.
    batch = dict(
        image=np.concatenate([chunk, np.zeros((batch_size - n, size, size, 3),
                                              np.float32)]),
        label=np.zeros(batch_size, np.int32),
        mask=np.arange(batch_size) < n)
    out = jax.device_get(run.eval_step(
        run.state, sharding.global_batch(batch, run.mesh)))
    probabilities.append(np.asarray(out['probabilities'], np.float32)[:n])
  probabilities = (np.concatenate(probabilities) if probabilities else
                   np.zeros((0, len(run.class_names)), np.float32))
  return list(zip(kept, probabilities)), bad


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


def compute_maps(run, split: str, num: int) -> dict:
  """Preprocessed images, labels and the maps of the chosen examples."""
  source = run.builder.as_data_source(split)
  indices = chosen_indices(len(source), num)
  records = [source[int(i)] for i in indices]
  images = np.stack([augment.eval_transform(
      r['image'], size=run.pre.size, mean=run.pre.mean, std=run.pre.std)
                     for r in records])
  labels = np.array([r['label'] for r in records], np.int32)
  variables = {'params': run.state.params,
               'batch_stats': run.state.batch_stats}
  logits_fn = lambda x: run.model.apply(variables, x, train=False)
  maps = jax.device_get(jax.jit(
      lambda x, y: intrinsic_maps.response_maps(logits_fn, x, y))(
          images, labels))
  return dict(indices=indices, images=images, labels=labels,
              **{k: np.asarray(v) for k, v in maps.items()})


@contextlib.contextmanager
def command_errors_exit():
  """For the commands: quiet logs unless --verbosity was given; a bad flag
  or missing file ends the command with its message alone."""
  from danil_jax import cli  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  with cli.errors_exit():
    try:
      yield
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f'error: {e}')
