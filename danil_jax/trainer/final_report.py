"""A run's final report: its last model (and its best, and its other
weights) scored on eval_split, as the `evaluate` command scores and writes
them.

`run` is train.Run: the config, workdir, data set, mesh, the splits and the
compiled eval steps.
"""

import json

from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.evaluation import scoring
from danil_jax.runtime import ema
from danil_jax.trainer import train_step as train_step_lib

FILE = 'final_metrics.json'  # in the workdir: the report as JSON


def score(run, eval_step, state, split: str, *, tta: str = 'none',
          weights: str | None = None, calibrated: bool = False):
  """(predictions, report) of `state`'s `weights` (default run.weights) on
  `split`; `calibrated`: by a temperature fitted on the validation split."""
  predictions = _predict(run, eval_step, state, split, tta=tta,
                         weights=weights, calibrated=calibrated)
  return predictions, _report(run, predictions)


def _predict(run, eval_step, state, split: str, *, tta: str = 'none',
             weights: str | None = None, calibrated: bool = False):
  """scoring.Predictions of `state` on `split`, as `score` takes them."""

  def predict_split(split):
    if split not in run.metadata:
      run.metadata[split] = scoring.read_metadata(run.data.builder, split)
    return scoring.predict_split(
        eval_step, ema.select(state, weights or run.weights),
        run.data.builder.as_data_source(split), pre=run.data.pre,
        global_batch_size=run.config.input.eval_batch_size, mesh=run.mesh,
        metadata=run.metadata[split], num_workers=run.config.input.num_workers,
        tta=tta)

  return (scoring.predict_calibrated(predict_split, split, run.val_split)
          if calibrated else predict_split(split))


def _report(run, predictions) -> dict:
  return scoring.report(predictions, run.data.class_names, run.config.eval)


def _final(run, state, step: int, *, reuse=None,
           weights: str | None = None) -> dict:
  """The final report's scores on eval_split: with config.eval.tta, and
  calibrated on the validation split. `reuse`: this state's predictions on
  eval_split with run.weights and without TTA, if at hand (used when there
  is nothing to add)."""
  if (reuse is not None and run.config.eval.tta == 'none'
      and not run.val_split and weights in (None, run.weights)):
    predictions = scoring.calibrate(reuse, None)
  else:
    predictions = _predict(run, run.final_eval_step, state,
                           run.config.dataset.eval_split,
                           tta=run.config.eval.tta, weights=weights,
                           calibrated=True)
  return dict(step=step, predictions=predictions,
              report=_report(run, predictions), weights=weights or run.weights)


def score_models(run, state, last_epoch: dict | None, best_manager):
  """({'last': scores[, 'last_<other weights>': ...][, 'best': ...]} on
  eval_split, the best model's select_by value or None).

  The last epoch's predictions are reused when it scored eval_split and
  there is no TTA to add; with a validation split the best model (if any
  was kept) is scored too, and each model's temperature is fitted on it.
  Each is scored with run.weights; with a weight EMA the last model also
  with the other weights (`last_raw` or `last_ema`), as timm scores both.
  """
  step = int(state.step)
  reuse = None if last_epoch is None else last_epoch['predictions']
  finals, best_value = {'last': _final(run, state, step, reuse=reuse)}, None
  if state.ema is not None:
    other = 'raw' if run.weights == 'ema' else 'ema'
    finals[f'last_{other}'] = _final(run, state, step, weights=other)
  if run.val_split:
    best_manager.wait_until_finished()
    best_step, best_value = best_checkpoint.best_so_far(best_manager)
    if best_step is not None:
      best_state = train_step_lib.state_from_checkpoint(
          state, best_checkpoint.restore_state(
              best_manager.directory, best_step,
              train_step_lib.state_to_checkpoint(state)))
      finals['best'] = _final(run, best_state, best_step)
  return finals, best_value


def write(run, finals: dict, best_value, tensorboard) -> None:
  """eval_split's scores, each also written to WORKDIR/eval/<split>_<name>/
  as the `evaluate` command writes it, to final_metrics.json and stdout;
  each names its model (checkpoint) and weights."""
  config, class_names = run.config, run.data.class_names
  test_split, step = config.dataset.eval_split, finals['last']['step']
  with_ema = any(name.startswith('last_') for name in finals)
  heads = {}
  for name, scored in finals.items():
    model = 'best' if name == 'best' else 'last'
    heads[name] = dict(step=scored['step'], split=test_split, model=model,
                       weights=scored['weights'])
    scoring.write_outputs(
        run.workdir / 'eval' / scoring.output_name(test_split, name,
                                                   config.eval.tta),
        scored['predictions'], dict(heads[name], **scored['report']),
        class_names, title=f'{config.dataset.name} {test_split}, {model} '
        f"model (step {scored['step']}"
        + (f", {scored['weights']} weights)" if with_ema else ')'))
    if run.val_split or with_ema:
      tensorboard.write(dict(kind='final', step=step, split=test_split,
                                     model=name, **scored['report']))
  final = dict(heads['last'], step=step, **finals['last']['report'])
  for name in finals:
    if name.startswith('last_'):  # the last model's other weights
      final[name] = dict(heads[name], **finals[name]['report'])
  if 'best' in finals:
    final['best'] = dict(heads['best'], selected_on=run.val_split,
                         select_by=run.select_by,
                         selection_value=best_value,
                         **finals['best']['report'])
  (run.workdir / FILE).write_text(json.dumps(final, indent=2))
  for name, scored in finals.items():
    chosen = (f', best {run.val_split} {run.select_by}'
              if name == 'best' else '')
    if with_ema:
      chosen += f", {scored['weights']} weights"
    print(f"\nFinal {test_split} metrics after {scored['step']} steps "
          f"({config.method}, {heads[name]['model']} model{chosen}):\n"
          + metrics_lib.format_report(scored['report'], class_names,
                                      config.eval.headline), flush=True)
