"""Evaluation of a model on a whole split: probabilities, ids and metrics.

Shared by the trainer (every epoch, and the final report) and the
`evaluate` command. `predict_split` runs `steps.eval_step` over
`input_pipeline.eval_batches` (the split in global index order, the last
batch padded and masked) and keeps, for every example, its float32 softmax
probabilities with its id and metadata read from the data source by index
(HAM10000 `image_id`/`lesion_id`, APTOS `id_code`, CRC-MSI
`patient_id`/`filename`; the demo has its index only).
"""

from __future__ import annotations

import csv
import io
import dataclasses
import json

from etils import epath
import jax
import numpy as np
import tensorflow_datasets as tfds

from danil_jax import input_pipeline
from danil_jax import metrics as metrics_lib
from danil_jax import sharding

# Text/scalar features kept beside each prediction, when the data set has
# them; the first present one names the example in predictions.csv.
ID_FEATURES = ('image_id', 'id_code', 'filename')
METADATA_FEATURES = ID_FEATURES + ('lesion_id', 'patient_id', 'slide_id')


@dataclasses.dataclass
class Predictions:
  """One evaluation of a split, in the split's index order."""
  labels: np.ndarray  # int [N]
  probabilities: np.ndarray  # float32 [N, K]
  loss: float  # mean cross-entropy over the N examples (padding excluded)
  metadata: dict  # feature name -> [N] values; always 'index'

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


def predict_split(eval_step, state, source, *, pre, global_batch_size: int,
                  mesh, metadata: dict | None = None,
                  num_workers: int = 0) -> Predictions:
  """Runs the jitted `eval_step` over every example of `source`."""
  probabilities, labels, ce_sum = [], [], 0.0
  batches = input_pipeline.eval_batches(
      source, global_batch_size=global_batch_size, pre=pre,
      num_workers=num_workers)
  for local_batch in batches:
    # The outputs are replicated: every process sees the whole global batch,
    # whose rows are the global indices in order (eval_batches).
    out = jax.device_get(eval_step(state, sharding.global_batch(local_batch,
                                                                mesh)))
    mask = np.asarray(out['mask'], bool)
    probabilities.append(np.asarray(out['probabilities'], np.float32)[mask])
    labels.append(np.asarray(out['label'])[mask])
    ce_sum += float(out['ce_sum'])
  labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
  if len(labels) != len(source):
    raise RuntimeError(f'evaluated {len(labels)} examples of a split of '
                       f'{len(source)}')
  if metadata is None:
    metadata = {'index': np.arange(len(labels))}
  return Predictions(labels=labels, probabilities=probabilities,
                     loss=ce_sum / len(labels), metadata=metadata)


def report(predictions: Predictions, class_names, eval_config) -> dict:
  """All metrics of one evaluation (metrics.py), plus the mean loss."""
  out = metrics_lib.classification_report(
      predictions.labels, predictions.probabilities, class_names)
  out.update(metrics_lib.benchmark_report(
      eval_config, predictions.labels, predictions.probabilities, class_names,
      predictions.metadata))
  out['loss'] = predictions.loss
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


def write_predictions_csv(path: str, predictions: Predictions,
                          class_names) -> None:
  """id, label, prediction, the other metadata, one probability per class
  (as the ISIC submission format has them)."""
  extra = [k for k in predictions.metadata if k != 'index']
  buffer = io.StringIO(newline='')  # epath's open() takes no newline=
  writer = csv.writer(buffer)
  writer.writerow(['id', 'label', 'prediction'] + extra + list(class_names))
  ids = predictions.ids
  for i in range(len(predictions.labels)):
    writer.writerow(
        [ids[i], class_names[predictions.labels[i]],
         class_names[predictions.predictions[i]]]
        + [predictions.metadata[k][i] for k in extra]
        + [repr(float(p)) for p in predictions.probabilities[i]])
  epath.Path(path).write_text(buffer.getvalue())


def write_outputs(outdir: str, predictions: Predictions, metrics: dict,
                  class_names, *, title: str = '') -> dict:
  """metrics.json, predictions.csv, confusion_matrix.png, roc_curves.png."""
  from danil_jax import eval_plots  # pylint: disable=g-import-not-at-top
  outdir = epath.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  paths = dict(metrics=outdir / 'metrics.json',
               predictions=outdir / 'predictions.csv',
               confusion=outdir / 'confusion_matrix.png',
               roc=outdir / 'roc_curves.png')
  paths['metrics'].write_text(json.dumps(metrics, indent=2))
  write_predictions_csv(paths['predictions'], predictions, class_names)
  eval_plots.confusion_matrix(metrics['confusion_matrix'], class_names,
                              paths['confusion'], title=title)
  eval_plots.roc_curves(predictions.labels, predictions.probabilities,
                        class_names, paths['roc'], title=title)
  return paths
