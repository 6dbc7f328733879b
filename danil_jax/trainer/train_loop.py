"""The training loop: epochs of compiled steps, each followed by an evaluation.

Per step: a progress bar, the train record every config.log_every_steps (with
DANIL's gradient share), a checkpoint every config.checkpoint_every_steps, and
a stop, checkpointed, on preemption or too many non-finite steps in a row.
Per epoch: the evaluation record, the best model kept, the curves plotted and
a checkpoint.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from danil_jax import best_checkpoint
from danil_jax import checkpointing
from danil_jax import faults
from danil_jax import metrics as metrics_lib
from danil_jax import plots
from danil_jax import sharding
from danil_jax import steps
from danil_jax import train_context as context


class _ProgressBar:
  """An epoch's tqdm bar showing the loss, L_d, misclassified share and
  images/s every few steps."""

  def __init__(self, run: context.Run, step: int, epoch_end: int):
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

  def __init__(self, run: context.Run, outputs: context.Outputs,
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

  def __init__(self, run: context.Run, train_step, gradient_share,
               evaluate: context.Evaluation, outputs: context.Outputs,
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
      batch = sharding.global_batch(next(train_iter), self._run.mesh)
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

  def _end_epoch(self, state, step: int) -> context.Scored:
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
    return context.Scored(step, predictions, report)

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
