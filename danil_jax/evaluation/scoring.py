"""Evaluation of a model on a whole split: probabilities, ids and metrics.

Shared by the trainer (every epoch, and the final report) and the
`evaluate` command. `predict_split` runs `eval_step` over
`input_pipeline.eval_batches` (the split in global index order, the last
batch padded and masked) and keeps, for every example, its float32 softmax
probabilities with its id and metadata read from the data source by index
(HAM10000 `image_id`/`lesion_id`, APTOS `id_code`, CRC-MSI
`patient_id`/`filename`; the demo has its index only).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from danil_jax.evaluation import calibration
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import tta as tta_lib

# Text/scalar features kept beside each prediction, when the data set has
# them; the first present one names the example in predictions.csv.
ID_FEATURES = ('image_id', 'id_code', 'filename')
METADATA_FEATURES = ID_FEATURES + ('lesion_id', 'patient_id', 'slide_id',
                                    'group')


@dataclasses.dataclass
class Predictions:
  """One evaluation of a split, in the split's index order."""
  labels: np.ndarray  # int [N]
  probabilities: np.ndarray  # float32 [N, K]
  loss: float  # mean cross-entropy over the N examples (padding excluded)
  metadata: dict  # feature name -> [N] values; always 'index'
  # float32 [N, K], log of `probabilities` computed without underflow.
  log_probabilities: np.ndarray | None = None
  tta: str = 'none'  # the test-time augmentation (danil_jax.runtime.tta)
  # Temperature scaling (`calibrate`): T, the calibrated probabilities, and
  # how T was fitted or why not ('' = not asked for).
  temperature: float | None = None
  calibrated_probabilities: np.ndarray | None = None
  calibration: str = ''
  # Further per-image columns, written last to predictions.csv: name -> [N]
  # texts (the map distance of `evaluate --map_distance`).
  columns: dict = dataclasses.field(default_factory=dict)

  @property
  def predictions(self) -> np.ndarray:
    return np.argmax(self.probabilities, axis=-1)

  @property
  def ids(self) -> np.ndarray:
    for key in ID_FEATURES:
      if key in self.metadata:
        return self.metadata[key]
    return self.metadata['index']


def read_metadata(builder, split: str) -> dict:
  """The id/metadata features of every example of `split`, by index,
  without decoding the images."""
  names = [k for k in METADATA_FEATURES if k in builder.info.features]
  metadata = {'index': None}
  if names:
    source = builder.as_data_source(
        split, decoders={'image': tfds.decode.SkipDecoding()})
    rows = [source[i] for i in range(len(source))]
    for name in names:
      metadata[name] = np.array([_text(r[name]) for r in rows])
    metadata['index'] = np.arange(len(rows))
  else:
    metadata['index'] = np.arange(len(builder.as_data_source(split)))
  return metadata


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def eval_step(state, batch, tta: str = 'none'):
  """Float32 softmax probabilities (and their logarithm), predictions and
  the masked loss sum for one (possibly padded) batch.

  `state` holds apply_fn, params and batch_stats (a train state, or the
  weights a command restored). With test-time augmentation (runtime.tta)
  the probabilities are the mean over each image's transformed copies, run
  as one batch; the loss is then the cross-entropy of that mean.
  """
  logits = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      tta_lib.expand(batch['image'], tta), train=False).astype(jnp.float32)
  probabilities, log_probabilities = tta_lib.average(logits, tta)
  mask = batch['mask'].astype(jnp.float32)
  ce = -jnp.take_along_axis(log_probabilities, batch['label'][:, None],
                            axis=-1)[:, 0]
  return dict(prediction=jnp.argmax(log_probabilities, -1),
              label=batch['label'], mask=batch['mask'],
              ce_sum=jnp.sum(ce * mask), probabilities=probabilities,
              log_probabilities=log_probabilities)


def jit_eval_step(mesh, tta: str = 'none'):
  """eval_step with test-time augmentation `tta`, jitted over `mesh`."""
  step = eval_step
  if tta != 'none':
    step = functools.partial(eval_step, tta=tta)
  return jax.jit(step, in_shardings=(multihost.replicated(mesh),
                                     multihost.data_sharding(mesh)),
                 out_shardings=multihost.replicated(mesh))


def predict_split(eval_step, state, source, *, pre, global_batch_size: int,
                  mesh, metadata: dict | None = None,
                  num_workers: int = 0, tta: str = 'none') -> Predictions:
  """Runs the jitted `eval_step` over every example of `source`; `tta`
  names the test-time augmentation `eval_step` was built with."""
  probabilities, log_probabilities, labels, ce_sum = [], [], [], 0.0
  batches = input_pipeline.eval_batches(
      source, global_batch_size=global_batch_size, pre=pre,
      num_workers=num_workers)
  for local_batch in batches:
    # The outputs are replicated: every process sees the whole global batch,
    # whose rows are the global indices in order (eval_batches).
    out = jax.device_get(eval_step(state, multihost.global_batch(local_batch,
                                                                 mesh)))
    mask = np.asarray(out['mask'], bool)
    probabilities.append(np.asarray(out['probabilities'], np.float32)[mask])
    log_probabilities.append(
        np.asarray(out['log_probabilities'], np.float32)[mask])
    labels.append(np.asarray(out['label'])[mask])
    ce_sum += float(out['ce_sum'])
  labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
  if len(labels) != len(source):
    raise RuntimeError(f'evaluated {len(labels)} examples of a split of '
                       f'{len(source)}')
  if metadata is None:
    metadata = {'index': np.arange(len(labels))}
  return Predictions(labels=labels, probabilities=probabilities,
                     loss=ce_sum / len(labels), metadata=metadata,
                     log_probabilities=np.concatenate(log_probabilities),
                     tta=tta)


def calibrate(predictions: Predictions, validation: Predictions | None,
              validation_split: str = '') -> Predictions:
  """`predictions` with a temperature fitted on `validation` (the
  predictions of the same model, same TTA, on `validation_split`), or
  with the reason there is none."""
  if validation is None:
    return dataclasses.replace(
        predictions, calibration='not calibrated: the run has no validation '
        'split (config.eval.validation_split) to fit a temperature on')
  try:
    temperature = calibration.fit_temperature(validation.labels,
                                              validation.log_probabilities)
  except ValueError as e:
    return dataclasses.replace(
        predictions, calibration=f'not calibrated on {validation_split!r}: {e}')
  return dataclasses.replace(
      predictions, temperature=temperature,
      calibrated_probabilities=calibration.apply_temperature(
          predictions.log_probabilities, temperature),
      calibration=f'temperature fitted on {validation_split!r} '
      f'({len(validation.labels)} images) by minimising the NLL'
      + (' (the evaluated split itself)' if validation is predictions
         else ''))


def predict_calibrated(predict, split: str, validation_split: str):
  """`predict(split)` (a split's Predictions) with temperature scaling
  fitted on `predict(validation_split)`, or the reason there is none
  (`validation_split` '')."""
  predictions = predict(split)
  validation = None
  if validation_split:
    validation = (predictions if validation_split == split
                  else predict(validation_split))
  return calibrate(predictions, validation, validation_split)


def report(predictions: Predictions, class_names, eval_config) -> dict:
  """All metrics of one evaluation (metrics.py, calibration.py), plus the
  mean loss and the TTA; with a fitted temperature, the calibrated ECE and
  Brier score."""
  labels, probabilities = predictions.labels, predictions.probabilities
  out = metrics_lib.classification_report(labels, probabilities, class_names)
  out.update(metrics_lib.benchmark_report(
      eval_config, labels, probabilities, class_names, predictions.metadata))
  out['loss'] = predictions.loss
  out['ece'] = calibration.expected_calibration_error(labels, probabilities)
  out['brier'] = calibration.brier_score(labels, probabilities)
  if predictions.temperature is not None:
    calibrated = predictions.calibrated_probabilities
    out['temperature'] = predictions.temperature
    out['ece_calibrated'] = calibration.expected_calibration_error(
        labels, calibrated)
    out['brier_calibrated'] = calibration.brier_score(labels, calibrated)
  if predictions.calibration:
    out['calibration'] = predictions.calibration
  out['tta'] = predictions.tta
  return out


def select_by(config) -> str:
  """The metric that picks the best checkpoint (`config.eval.select_by`)."""
  return config.eval.select_by or config.eval.headline[0]


def validation_split(config, splits) -> str:
  """The split scored every epoch for model selection, or '' for none.

  'auto': 'validation' when training on 'train' and the data set has it.
  """
  split = config.eval.validation_split
  if split == 'auto':
    return ('validation' if config.dataset.train_split == 'train'
            and 'validation' in splits else '')
  return split


def output_name(split: str, model: str, tta: str = 'none') -> str:
  """The folder under WORKDIR/eval/ of one model's evaluation of a split:
  '<split>_<model>', with '_<tta>' after it when test-time augmented."""
  return f'{split}_{model}' + (f'_{tta}' if tta != 'none' else '')


def write_predictions_csv(path: str, predictions: Predictions,
                          class_names) -> None:
  """id, label, prediction, the other metadata, one probability per class
  (as the ISIC submission format has them), then, with a fitted
  temperature, one calibrated probability per class (`calibrated_<class>`),
  then `predictions.columns`."""
  extra = [k for k in predictions.metadata if k != 'index']
  calibrated = predictions.calibrated_probabilities
  buffer = io.StringIO(newline='')  # epath's open() takes no newline=
  writer = csv.writer(buffer)
  writer.writerow(['id', 'label', 'prediction'] + extra + list(class_names)
                  + ([f'calibrated_{n}' for n in class_names]
                     if calibrated is not None else [])
                  + list(predictions.columns))
  ids = predictions.ids
  for i in range(len(predictions.labels)):
    writer.writerow(
        [ids[i], class_names[predictions.labels[i]],
         class_names[predictions.predictions[i]]]
        + [predictions.metadata[k][i] for k in extra]
        + [repr(float(p)) for p in predictions.probabilities[i]]
        + ([repr(float(p)) for p in calibrated[i]]
           if calibrated is not None else [])
        + [column[i] for column in predictions.columns.values()])
  epath.Path(path).write_text(buffer.getvalue())


def write_outputs(outdir: str, predictions: Predictions, metrics: dict,
                  class_names, *, title: str = '') -> dict:
  """metrics.json, predictions.csv, confusion_matrix.png, roc_curves.png,
  reliability_diagram.png."""
  from danil_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
  outdir = epath.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  paths = dict(metrics=outdir / 'metrics.json',
               predictions=outdir / 'predictions.csv',
               confusion=outdir / 'confusion_matrix.png',
               roc=outdir / 'roc_curves.png',
               reliability=outdir / 'reliability_diagram.png')
  paths['metrics'].write_text(json.dumps(metrics, indent=2))
  write_predictions_csv(paths['predictions'], predictions, class_names)
  plots.confusion_matrix(metrics['confusion_matrix'], class_names,
                         paths['confusion'], title=title)
  plots.roc_curves(predictions.labels, predictions.probabilities,
                   class_names, paths['roc'], title=title)
  plots.reliability_diagram(
      predictions.labels, predictions.probabilities, paths['reliability'],
      calibrated=predictions.calibrated_probabilities,
      temperature=predictions.temperature, title=title)
  return paths
