"""Training and evaluation of Base, OHEM and DANIL, data-parallel over a mesh.

`train_and_evaluate(config, workdir)` reads top to bottom: set-up (config
checks, data, model and optimiser, compiled steps), restore, the step loop
(progress, train records, checkpoints, preemption, the non-finite guard,
per-epoch evaluation and the best model), the final report. Rerunning it
with the same workdir resumes from the latest checkpoint.
"""

import contextlib
import dataclasses
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from danil_jax import data_prep
from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.evaluation import plots
from danil_jax.evaluation import scoring
from danil_jax.runtime import checkpointing
from danil_jax.runtime import data_pin
from danil_jax.runtime import ema
from danil_jax.runtime import faults
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import run_builder
from danil_jax.runtime import run_config
from danil_jax.runtime import run_log
from danil_jax.trainer import config_checks
from danil_jax.trainer import final_report
from danil_jax.trainer import train_step as train_step_lib


@dataclasses.dataclass
class Run:
  """What the stages of one run share: set once, read everywhere."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  is_chief: bool
  mesh: jax.sharding.Mesh
  data: run_builder.Data
  train_source: Any  # config.dataset.train_split's data source
  steps_per_epoch: int
  total_steps: int
  # Scoring a split (scoring.Predictions, report): the splits, the metric
  # the best model is kept by, the weights scored, the compiled eval steps.
  val_split: str
  epoch_split: str
  select_by: str
  weights: str
  eval_step: Any
  final_eval_step: Any  # with config.eval.tta
  metadata: dict = dataclasses.field(default_factory=dict)  # per split


@dataclasses.dataclass
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


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains per `config`, evaluating each epoch; returns the final report.

  Raises faults.Preempted (a SystemExit, status faults.EXIT_PREEMPTED) after
  saving a checkpoint when SIGTERM/SIGINT arrives, and faults.NonFiniteError
  per config.faults.max_nonfinite_in_a_row.
  """
  with faults.PreemptionGuard() as preemption:
    # ---------------------------------------------------------------- setup --
    # Any path etils.epath handles: a local or shared disk, gs://...
    workdir = checkpointing.absolute_path(workdir)
    run = _set_up(config, workdir)
    state = _initial_state(run)
    replicated, data = (multihost.replicated(run.mesh),
                        multihost.data_sharding(run.mesh))
    train_step = jax.jit(train_step_lib.make_train_step(config),
                         in_shardings=(replicated, data),
                         out_shardings=(replicated, replicated),
                         donate_argnums=0)
    gradient_share = train_step_lib.make_gradient_share(config)
    if gradient_share is not None:
      gradient_share = jax.jit(gradient_share, in_shardings=(replicated, data),
                               out_shardings=replicated)

    # -------------------------------------------------------------- restore --
    state, outputs = _restore(run, state)
    # The input position follows from the step: no iterator state to restore.
    # Closed however the run ends, so grain's worker processes and their
    # shared memory go with it.
    with contextlib.closing(iter(input_pipeline.train_loader(
        run.train_source, global_batch_size=config.input.global_batch_size,
        pre=run.data.pre, seed=config.seed, start_step=int(state.step),
        num_workers=config.input.num_workers))) as batches:

      # ------------------------------------------------------ the step loop --
      state, last_epoch = _train(run, state, batches, train_step,
                                 gradient_share, outputs, preemption)

    # --------------------------------------------------------------- report --
    finals, best_value = final_report.score_models(run, state, last_epoch,
                                               outputs.best_manager)
    if run.is_chief:
      final_report.write(run, finals, best_value, outputs.tensorboard)
    outputs.close()
    return finals['last']['report']


# ------------------------------------------------------------------ setup --


def _set_up(config: ml_collections.ConfigDict, workdir: epath.Path) -> Run:
  """Checks the config, pins it and the data set to the workdir, opens the
  data set and the device mesh.

  Bad values, damaged weights, a changed config and a data set that differs
  between hosts are named before any model is compiled.
  """
  is_chief = multihost.is_chief()
  config_checks.check(config)
  if config.dataset.name == data_prep.FOLDER:
    data_prep.own_dataset.absolute_paths(config.dataset)
  multihost.same_on_every_host('config', run_config.shared_by_every_host(
      config), 'the config (the keys that differ)')
  if config.model.pretrained:
    from danil_jax.models import weights  # pylint: disable=g-import-not-at-top
    weights.check(config.model.name, config.model.pretrained)
  workdir.mkdir(parents=True, exist_ok=True)
  run_config.pin(config, workdir, write=is_chief)
  mesh = multihost.make_mesh()
  config_checks.check_batch_sizes(config, mesh)
  logging.info('%d devices over %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices())

  data = run_builder.open_data(config, build=is_chief, augment=True)
  config_checks.check_splits(config, data.builder)
  train_source = data.builder.as_data_source(config.dataset.train_split)
  multihost.same_on_every_host(
      'dataset', [data.class_names, len(train_source)],
      'the data set (its classes, the number of training images)')
  config_checks.check_num_classes(config, data.class_names)
  data_pin.pin(workdir, data.builder, write=is_chief,
               allow_change=config.faults.allow_config_change)
  steps_per_epoch = len(train_source) // config.input.global_batch_size
  total_steps = steps_per_epoch * config.num_epochs
  if config.max_steps >= 0:
    total_steps = min(total_steps, config.max_steps)
  val_split = scoring.validation_split(config, data.builder.info.splits)
  eval_step = scoring.jit_eval_step(mesh)
  return Run(
      config, workdir, is_chief, mesh, data, train_source, steps_per_epoch,
      total_steps,
      val_split=val_split,
      epoch_split=val_split or config.dataset.eval_split,
      select_by=scoring.select_by(config),
      weights=ema.default_weights(config), eval_step=eval_step,
      # The final report's, with test-time augmentation (none per epoch:
      # model selection stays as cheap as one forward).
      final_eval_step=(scoring.jit_eval_step(mesh, config.eval.tta)
                       if config.eval.tta != 'none' else eval_step))


def _initial_state(run: Run) -> train_step_lib.TrainState:
  """The model's initial (or pretrained) weights and optimiser, replicated."""
  config = run.config
  model, variables = run_builder.init_model(config, run.data.class_names,
                                            run.data.pre, run.mesh)
  state_rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]
  tx = train_step_lib.make_optimizer(config.optim, run.steps_per_epoch,
                                     config.num_epochs)
  return multihost.replicate(
      train_step_lib.create_train_state(model, variables, tx, state_rng,
                                        ema=config.optim.ema_decay > 0),
      run.mesh)


# ---------------------------------------------------------------- restore --


def _restore(run: Run, state):
  """(state at the latest checkpoint, or as given; the run's outputs), the
  logs cut back to that step."""
  config, workdir = run.config, run.workdir
  manager = checkpointing.make_manager(workdir,
                                       max_to_keep=config.keep_checkpoints)
  multihost.same_on_every_host(
      'checkpoint', manager.latest_step(),
      'the latest checkpoint step in WORKDIR/checkpoints')
  restored = checkpointing.restore_latest(
      manager, train_step_lib.state_to_checkpoint(state))
  if restored is not None:
    state = train_step_lib.state_from_checkpoint(state, restored)
  start_step = int(state.step)
  log = run_log.MetricsLog(workdir, enabled=run.is_chief)
  log.truncate_after(start_step)
  tensorboard = run_log.ScalarWriter(workdir, enabled=run.is_chief,
                                     start_step=start_step)
  best_manager = (best_checkpoint.make_manager(workdir, run.select_by)
                  if run.val_split else None)
  if start_step:
    logging.info('resumed from the checkpoint at step %d', start_step)
    if run.is_chief:
      print(f'Resuming from step {start_step} in {workdir}', flush=True)
  return state, Outputs(manager, best_manager, log, tensorboard)


# ------------------------------------------------------------ the step loop --


def _train(run: Run, state, batches, train_step, gradient_share,
           outputs: Outputs, preemption: faults.PreemptionGuard):
  """Steps to run.total_steps, evaluating at each epoch's end; returns (the
  final state, the last epoch's scores, None if no epoch ended).

  Per step: the progress bar, a train record every config.log_every_steps
  (with DANIL's gradient share), a checkpoint every
  config.checkpoint_every_steps, and a stop, checkpointed, on preemption or
  too many non-finite steps in a row. Per epoch: the evaluation record, the
  best model kept, the curves plotted and a checkpoint.
  """
  config, manager = run.config, outputs.manager
  nonfinite = faults.NonFiniteMonitor(
      config.faults.max_nonfinite_in_a_row,
      lambda: checkpointing.latest_description(manager))
  step, last_epoch, bar = int(state.step), None, None
  pending, since = [], (time.time(), step)  # the next train record's steps
  try:
    while step < run.total_steps:
      epoch_end = min((step // run.steps_per_epoch + 1) * run.steps_per_epoch,
                      run.total_steps)
      _stop_if_preempted(run, state, step, manager, nonfinite, preemption)
      if bar is None:
        bar, shown = _progress_bar(run, step, epoch_end), (time.time(), step)
      batch = multihost.global_batch(next(batches), run.mesh)
      log_now = (step + 1) % config.log_every_steps == 0
      share = (gradient_share(state, batch)
               if log_now and gradient_share is not None else None)
      state, step_metrics = train_step(state, batch)
      # Decoded by a grain worker, the batch lives in shared memory: freed
      # here, not held into the evaluation and past the iterator's close,
      # where it outlives its worker and exit reports it leaked.
      del batch
      step += 1
      nonfinite.add(step, step_metrics)
      nonfinite.check(keep_last=1)  # the newest step may still be running
      pending.append(step_metrics)
      bar.update(1)
      if step % 5 == 0 or step == epoch_end:
        shown = _show_progress(run, bar, step, step_metrics, shown)
      if log_now:
        since = _write_train_record(run, outputs, step, pending, share, since)
        pending = []
      if step % config.checkpoint_every_steps == 0 and step < epoch_end:
        nonfinite.check()
        checkpointing.save(manager, step,
                           train_step_lib.state_to_checkpoint(state))
      if step == epoch_end:
        bar.close()
        bar = None
        nonfinite.check()
        last_epoch = _end_epoch(run, state, step, outputs)
  finally:
    # A save still being written when an error ends the loop (a NaN right
    # after a checkpoint) is finished, not lost.
    manager.wait_until_finished()
  return state, last_epoch


def _progress_bar(run: Run, step: int, epoch_end: int) -> tqdm:
  epoch = step // run.steps_per_epoch
  return tqdm(total=epoch_end - epoch * run.steps_per_epoch,
              initial=step - epoch * run.steps_per_epoch, unit='step',
              desc=f'epoch {epoch + 1}/{run.config.num_epochs}',
              disable=not run.is_chief, dynamic_ncols=True)


def _show_progress(run: Run, bar: tqdm, step: int, step_metrics: dict,
                   shown):
  """The loss, L_d, the misclassified share and images/s since the last
  shown (time, step) on the bar; returns the new mark."""
  latest = jax.device_get(step_metrics)
  now = time.time()
  rate = (step - shown[1]) * run.config.input.global_batch_size / (
      now - shown[0])
  bar.set_postfix(
      loss=f"{latest['loss']:.4f}", Ld=f"{latest['distraction']:.3g}",
      miscls=f"{latest['misclassified']:.2f}", img_s=f'{rate:.0f}')
  return now, step


def _write_train_record(run: Run, outputs: Outputs, step: int, pending,
                        share, since):
  """Writes the means of the step metrics since the last record (with
  DANIL's gradient share if given); returns the new (time, step) mark."""
  means = {k: float(np.mean(v)) for k, v in
           jax.device_get(jax.tree.map(lambda *x: jnp.stack(x),
                                       *pending)).items()}
  if share is not None:
    means.update({k: float(v) for k, v in jax.device_get(share).items()})
  now = time.time()
  means['images_per_s'] = ((step - since[1])
                           * run.config.input.global_batch_size
                           / (now - since[0]))
  outputs.log.write(dict(kind='train', step=step,
                         epoch=step / run.steps_per_epoch, **means))
  outputs.tensorboard.write(dict(kind='train', step=step, **means))
  return now, step


def _end_epoch(run: Run, state, step: int, outputs: Outputs) -> dict:
  """Scores the epoch's split, keeps the best model, plots, checkpoints;
  returns the scores."""
  config, select_by = run.config, run.select_by
  predictions, report = final_report.score(run, run.eval_step, state,
                                           run.epoch_split)
  record = dict(kind='eval', step=step, epoch=step / run.steps_per_epoch,
                split=run.epoch_split, **report)
  outputs.log.write(record)
  outputs.tensorboard.write(record)
  if select_by not in report:
    raise ValueError(f'config.eval.select_by / headline[0] is '
                     f'{select_by!r}, not a metric of this evaluation; '
                     f'expected one of {sorted(report)}')
  if run.val_split:
    best_checkpoint.maybe_save(outputs.best_manager, select_by, step,
                               train_step_lib.state_to_checkpoint(state),
                               report[select_by])
  if run.is_chief:
    plots.plot_curves(outputs.log.read(), run.workdir / plots.CURVES_FILE,
                      title=f'{config.dataset.name} {config.model.name} '
                      f'{config.method}')
    print(f'epoch {step / run.steps_per_epoch:.2f} {run.epoch_split}: '
          + metrics_lib.format_headline(report, config.eval.headline)
          + f" loss {report['loss']:.4f}", flush=True)
  checkpointing.save(outputs.manager, step,
                     train_step_lib.state_to_checkpoint(state))
  return dict(step=step, predictions=predictions, report=report,
              weights='raw')


def _stop_if_preempted(run: Run, state, step: int, manager, nonfinite,
                       preemption: faults.PreemptionGuard) -> None:
  """On SIGTERM/SIGINT (any process): checkpoint at `step` and exit."""
  if not preemption.should_stop(step):
    return
  nonfinite.check()
  if manager.latest_step() != step:
    checkpointing.save(manager, step,
                       train_step_lib.state_to_checkpoint(state))
  manager.wait_until_finished()
  preempted = faults.Preempted(step, str(manager.directory))
  if run.is_chief:
    print(f'\n{preempted}', flush=True)
  raise preempted
