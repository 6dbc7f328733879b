"""Scores a run's checkpoint on a split, without touching its training state.

python -m danil_jax.evaluate --workdir=DIR [--split=test]
    [--checkpoint=best|last|STEP]

writes DIR/eval/<split>_<checkpoint>/: metrics.json (every metric of
metrics.py, the data set's own included), predictions.csv (id, label,
prediction, metadata, one probability column per class) and
confusion_matrix.png, roc_curves.png.
"""

import os

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to score.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'last', "'best' (by the validation metric), 'last' or a "
    'step number.')
flags.mark_flags_as_required(['workdir'])


def evaluate_run(workdir: str, split: str = 'test',
                 checkpoint: str = 'last') -> tuple[str, dict]:
  """Evaluates; returns the output directory and the metrics."""
  # pylint: disable=g-import-not-at-top
  from danil_jax import evaluation
  from danil_jax import metrics as metrics_lib
  from danil_jax import trained_run
  run = trained_run.load(workdir, checkpoint)
  if split not in run.builder.info.splits:
    raise ValueError(f'--split={split!r}: {run.config.dataset.name} has '
                     f'splits {sorted(run.builder.info.splits)}')
  predictions = evaluation.predict_split(
      run.eval_step, run.state, run.builder.as_data_source(split),
      pre=run.pre, global_batch_size=run.config.input.eval_batch_size,
      mesh=run.mesh, metadata=evaluation.read_metadata(run.builder, split),
      num_workers=run.config.input.num_workers)
  metrics = dict(step=run.step, split=split, model=checkpoint,
                 **evaluation.report(predictions, run.class_names,
                                     run.config.eval))
  outdir = os.path.join(os.path.abspath(workdir), 'eval',
                        f'{split}_{checkpoint}')
  evaluation.write_outputs(
      outdir, predictions, metrics, run.class_names,
      title=f'{run.config.dataset.name} {split}, {checkpoint} model '
      f'(step {run.step})')
  print(f'{split} metrics of the {checkpoint} model (step {run.step}):\n'
        + metrics_lib.format_report(metrics, run.class_names,
                                    run.config.eval.headline))
  print(f'wrote {outdir}')
  return outdir, metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from danil_jax import trained_run  # pylint: disable=g-import-not-at-top
  with trained_run.command_errors_exit():
    evaluate_run(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)


if __name__ == '__main__':
  app.run(main)
