"""The training loop: epochs of compiled steps, each followed by an evaluation.

Per step: a progress bar, the train record every config.log_every_steps (with
DANIL's gradient share), a checkpoint every config.checkpoint_every_steps, and
a stop, checkpointed, on preemption or too many non-finite steps in a row.
Per epoch: the evaluation record, the best model kept, the curves plotted and
a checkpoint.

The parts of one run that the trainer's stages share live here too: `Run`
holds the config, workdir, devices and data set; `Evaluation` scores a split
with the compiled eval step; `Outputs` are the checkpoints and logs a run
writes; `Scored` is one model's predictions and report.
"""

import dataclasses
import functools
import time
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.evaluation import plots
from danil_jax.evaluation import scoring as evaluation
from danil_jax.runtime import checkpointing
from danil_jax.runtime import ema
from danil_jax.runtime import faults
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import run_log
from danil_jax.runtime import steps

# ---------------------------------------------- what a run's stages share --


@dataclasses.dataclass(frozen=True)
class Data:
  """The data set as a run reads it, and the run's length in steps."""
  builder: Any  # a tfds DatasetBuilder
  class_names: list[str]
  train_source: Any
  pre: input_pipeline.Preprocessing
  model_info: Any  # models.info of config.model.name
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass(frozen=True)
class Run:
  """What the parts of one run share."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  is_chief: bool
  mesh: jax.sharding.Mesh
  dataset: Data


class Evaluation:
  """Scores a split with the compiled eval step: (predictions, report).

  With a validation split, every epoch scores it and keeps the best model
  by `select_by`; the final report scores eval_split with best and last.
  Without (the paper's protocol), every epoch scores eval_split. With a
  weight EMA the `weights` of ema.default_weights are scored unless told
  otherwise (the best model is kept by them). `final` is the final report's
  evaluation: with config.eval.tta, and calibrated by a temperature fitted
  on the validation split.
  """

  def __init__(self, run: Run, eval_step, final_eval_step=None):
    self._run, self._eval_step = run, eval_step
    self._final_eval_step = final_eval_step or eval_step
    self.val_split = evaluation.validation_split(
        run.config, run.dataset.builder.info.splits)
    self.epoch_split = self.val_split or run.config.dataset.eval_split
    self.select_by = evaluation.select_by(run.config)
    self.weights = ema.default_weights(run.config)
    self.tta = run.config.eval.tta
    self._split_metadata = {}

  def _predict(self, eval_step, state, split: str, tta: str,
               weights: str | None):
    config, dataset = self._run.config, self._run.dataset
    state = ema.select(state, weights or self.weights)
    if split not in self._split_metadata:
      self._split_metadata[split] = evaluation.read_metadata(dataset.builder,
                                                             split)
    return evaluation.predict_split(
        eval_step, state, dataset.builder.as_data_source(split),
        pre=dataset.pre, global_batch_size=config.input.eval_batch_size,
        mesh=self._run.mesh, metadata=self._split_metadata[split],
        num_workers=config.input.num_workers, tta=tta)

  def _report(self, predictions):
    return predictions, evaluation.report(
        predictions, self._run.dataset.class_names, self._run.config.eval)

  def __call__(self, state, split: str, weights: str | None = None):
    return self._report(self._predict(self._eval_step, state, split, 'none',
                                      weights))

  def final(self, state, split: str, reuse=None, weights: str | None = None):
    """The final report on `split` with `weights` (default self.weights);
    `reuse`: this state's predictions on `split` with self.weights and
    without TTA, if at hand (used when there is nothing to add)."""
    if (reuse is not None and self.tta == 'none' and not self.val_split
        and weights in (None, self.weights)):
      return self._report(evaluation.calibrate(reuse, None))
    return self._report(evaluation.predict_calibrated(
        lambda s: self._predict(self._final_eval_step, state, s, self.tta,
                                weights),
        split, self.val_split))


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What a run writes into its workdir besides the final report."""
  manager: Any  # orbax CheckpointManager of the latest checkpoints
  best_manager: Any  # of the best model by select_by; None without val split
  log: run_log.MetricsLog
  tensorboard: run_log.ScalarWriter

  def close(self) -> None:
    self.tensorboard.close()
    if self.best_manager is not None:
      self.best_manager.close()
    self.manager.close()


@dataclasses.dataclass(frozen=True)
class Scored:
  """A model's step and its predictions and report on a split."""
  step: int
  predictions: Any
  report: dict
  weights: str = 'raw'  # 'ema' or 'raw' (ema.py)


# --------------------------------------------------------------- the loop --


class _ProgressBar:
  """An epoch's tqdm bar showing the loss, L_d, misclassified share and
  images/s every few steps."""

  def __init__(self, run: Run, step: int, epoch_end: int):
    steps_per_epoch = run.dataset.steps_per_epoch
    epoch = step // steps_per_epoch
    self._bar = tqdm(total=epoch_end - epoch * steps_per_epoch,
                     initial=step - epoch * steps_per_epoch, unit='step',
                     desc=f'epoch {epoch + 1}/{run.config.num_epochs}',
                     disable=not run.is_chief, dynamic_ncols=True)
    self._epoch_end = epoch_end
    self._batch_size = run.config.input.global_batch_size
    self._time, self._step = time.time(), step

  def update(self, step: int, step_metrics: dict) -> None:
    self._bar.update(1)
    if step % 5 == 0 or step == self._epoch_end:
      latest = jax.device_get(step_metrics)
      now = time.time()
      rate = (step - self._step) * self._batch_size / (now - self._time)
      self._bar.set_postfix(
          loss=f"{latest['loss']:.4f}", Ld=f"{latest['distraction']:.3g}",
          miscls=f"{latest['misclassified']:.2f}",
          img_s=f'{rate:.0f}')
      self._time, self._step = now, step

  def close(self) -> None:
    self._bar.close()


class _TrainRecords:
  """Train records: the means of the step metrics since the last record."""

  def __init__(self, run: Run, outputs: Outputs,
               start_step: int):
    self._run, self._outputs = run, outputs
    self._pending, self._time, self._step = [], time.time(), start_step

  def add(self, step_metrics: dict) -> None:
    self._pending.append(step_metrics)

  def write(self, step: int, share: dict | None) -> None:
    """Writes the record of `step`, with DANIL's gradient share if given."""
    means = {k: float(np.mean(v)) for k, v in
             jax.device_get(jax.tree.map(lambda *x: jnp.stack(x),
                                         *self._pending)).items()}
    if share is not None:
      means.update({k: float(v) for k, v in jax.device_get(share).items()})
    now = time.time()
    means['images_per_s'] = ((step - self._step)
                             * self._run.config.input.global_batch_size
                             / (now - self._time))
    self._time, self._step, self._pending = now, step, []
    self._outputs.log.write(dict(
        kind='train', step=step,
        epoch=step / self._run.dataset.steps_per_epoch, **means))
    self._outputs.tensorboard.write(dict(kind='train', step=step, **means))


class TrainingLoop:
  """Trains epoch by epoch, evaluating, checkpointing and logging; stops on
  preemption or too many non-finite steps in a row."""

  def __init__(self, run: Run, train_step, gradient_share,
               evaluate: Evaluation, outputs: Outputs,
               preemption: faults.PreemptionGuard):
    self._run = run
    self._train_step, self._gradient_share = train_step, gradient_share
    self._evaluate, self._outputs = evaluate, outputs
    self._preemption = preemption
    self._nonfinite = faults.NonFiniteMonitor(
        run.config.faults.max_nonfinite_in_a_row,
        functools.partial(checkpointing.latest_description, outputs.manager))

  def run(self, state, train_iter):
    """(final state, step, the last epoch's Scored; None if no epoch ran)."""
    dataset = self._run.dataset
    step, last_epoch = int(state.step), None
    records = _TrainRecords(self._run, self._outputs, step)
    try:
      while step < dataset.total_steps:
        epoch = step // dataset.steps_per_epoch
        epoch_end = min((epoch + 1) * dataset.steps_per_epoch,
                        dataset.total_steps)
        state, step = self._train_epoch(state, step, epoch_end, train_iter,
                                        records)
        last_epoch = self._end_epoch(state, step)
        if step < dataset.total_steps:
          self._stop_if_preempted(state, step)
    finally:
      # A save still being written when an error ends the loop (a NaN right
      # after a checkpoint) is finished, not lost.
      self._outputs.manager.wait_until_finished()
    return state, step, last_epoch

  def _train_epoch(self, state, step: int, epoch_end: int, train_iter,
                   records: _TrainRecords):
    """Steps up to `epoch_end`; returns (state, step)."""
    config, manager = self._run.config, self._outputs.manager
    bar = _ProgressBar(self._run, step, epoch_end)
    while step < epoch_end:
      self._stop_if_preempted(state, step)
      batch = multihost.global_batch(next(train_iter), self._run.mesh)
      log_now = (step + 1) % config.log_every_steps == 0
      share = (self._gradient_share(state, batch)
               if log_now and config.method == 'danil' else None)
      state, step_metrics = self._train_step(state, batch)
      step += 1
      self._nonfinite.add(step, step_metrics)
      self._nonfinite.check(keep_last=1)  # the newest step may still be running
      records.add(step_metrics)
      bar.update(step, step_metrics)
      if log_now:
        records.write(step, share)
      if step % config.checkpoint_every_steps == 0 and step < epoch_end:
        self._nonfinite.check()
        checkpointing.save(manager, step, steps.state_to_checkpoint(state))
    bar.close()
    return state, step

  def _end_epoch(self, state, step: int) -> Scored:
    """Scores the epoch's split, keeps the best model, plots, checkpoints."""
    run, evaluate, outputs = self._run, self._evaluate, self._outputs
    config, select_by = run.config, evaluate.select_by
    self._nonfinite.check()
    predictions, report = evaluate(state, evaluate.epoch_split)
    record = dict(kind='eval', step=step,
                  epoch=step / run.dataset.steps_per_epoch,
                  split=evaluate.epoch_split, **report)
    outputs.log.write(record)
    outputs.tensorboard.write(record)
    if select_by not in report:
      raise ValueError(f'config.eval.select_by / headline[0] is '
                       f'{select_by!r}, not a metric of this evaluation; '
                       f'expected one of {sorted(report)}')
    if evaluate.val_split:
      best_checkpoint.maybe_save(outputs.best_manager, select_by, step,
                                 steps.state_to_checkpoint(state),
                                 report[select_by])
    if run.is_chief:
      plots.plot_curves(outputs.log.read(), run.workdir / plots.CURVES_FILE,
                        title=f'{config.dataset.name} {config.model.name} '
                        f'{config.method}')
      print(f'epoch {step / run.dataset.steps_per_epoch:.2f} '
            f'{evaluate.epoch_split}: '
            + metrics_lib.format_headline(report, config.eval.headline)
            + f" loss {report['loss']:.4f}", flush=True)
    checkpointing.save(outputs.manager, step, steps.state_to_checkpoint(state))
    return Scored(step, predictions, report)

  def _stop_if_preempted(self, state, step: int):
    """On SIGTERM/SIGINT (any process): checkpoint at `step` and exit."""
    if not self._preemption.should_stop(step):
      return
    manager = self._outputs.manager
    self._nonfinite.check()
    if manager.latest_step() != step:
      checkpointing.save(manager, step, steps.state_to_checkpoint(state))
    manager.wait_until_finished()
    preempted = faults.Preempted(step, str(manager.directory))
    if self._run.is_chief:
      print(f'\n{preempted}', flush=True)
    raise preempted
