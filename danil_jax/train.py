"""Training and evaluation of Base, OHEM and DANIL, data-parallel over a mesh.

`train_and_evaluate(config, workdir)` runs top to bottom in marked sections:
setup, data, model and optimiser, compiled steps, resume, the training loop
with per-epoch evaluation. Rerunning it with the same workdir resumes from
the latest checkpoint.
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import data_prep
from danil_jax import best_checkpoint
from danil_jax import checkpointing
from danil_jax import config_checks
from danil_jax import evaluation
from danil_jax import faults
from danil_jax import input_pipeline
from danil_jax import metrics as metrics_lib
from danil_jax import models
from danil_jax import multihost
from danil_jax import plots
from danil_jax import run_config
from danil_jax import run_log
from danil_jax import sharding
from danil_jax import steps
from danil_jax import tb_writer


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains per `config`, evaluating each epoch; returns the final report.

  Raises faults.Preempted (a SystemExit, status faults.EXIT_PREEMPTED) after
  saving a checkpoint when SIGTERM/SIGINT arrives, and faults.NonFiniteError
  per config.faults.max_nonfinite_in_a_row.
  """
  with faults.PreemptionGuard(
      config.faults.preemption_sync_every_steps) as preemption:
    return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preemption: faults.PreemptionGuard) -> dict:
  # ---------------------------------------------------------------- setup --
  # Any path etils.epath handles: a local or shared disk, gs://...
  workdir = checkpointing.absolute_path(workdir)
  is_chief = multihost.is_chief()
  # Fault handling: bad values, damaged weights and a changed config are
  # named before any data is built or model compiled.
  config_checks.check(config)
  if config.model.pretrained:
    from danil_jax import weights  # pylint: disable=g-import-not-at-top
    weights.check(config.model.name, config.model.pretrained)
  workdir.mkdir(parents=True, exist_ok=True)
  run_config.pin(config, workdir, write=is_chief)
  mesh = sharding.make_mesh()
  for key in ('global_batch_size', 'eval_batch_size'):  # validates both
    try:
      sharding.per_process_batch_size(config.input[key], mesh)
    except ValueError as e:
      raise ValueError(f'config.input.{key}: {e}') from None
  logging.info('%d devices over %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices())

  # ----------------------------------------------------------------- data --
  # One build, many readers: process 0 builds a missing data set while the
  # others wait; then they open it. Its failure ends every host at once.
  with multihost.chief_first('dataset',
                             config.distributed_init.data_build_timeout_s):
    builder = data_prep.prepare(
        config.dataset.name, data_dir=config.dataset.data_dir,
        manual_dir=config.dataset.manual_dir or None,
        config=config.dataset.builder_config or None, build=is_chief)
  config_checks.check_splits(config, builder)
  class_names = list(builder.info.features['label'].names)
  if len(class_names) != config.dataset.num_classes:
    raise ValueError(
        f'config.dataset.num_classes is {config.dataset.num_classes} but '
        f'{config.dataset.name!r} has {len(class_names)} classes: '
        f'{class_names}')
  train_source = builder.as_data_source(config.dataset.train_split)
  eval_source = builder.as_data_source(config.dataset.eval_split)
  model_info = models.info(config.model.name)
  pre = input_pipeline.Preprocessing(
      size=config.dataset.image_size or model_info.input_size,
      mean=model_info.mean, std=model_info.std, augment=config.input.augment)
  global_batch_size = config.input.global_batch_size
  steps_per_epoch = len(train_source) // global_batch_size
  total_steps = steps_per_epoch * config.num_epochs
  if config.max_steps >= 0:
    total_steps = min(total_steps, config.max_steps)
  # The input position follows from the step: opened once the resumed step
  # is known, below.
  train_batches = functools.partial(
      input_pipeline.train_loader, train_source,
      global_batch_size=global_batch_size, pre=pre, seed=config.seed,
      num_workers=config.input.num_workers)

  # ----------------------------------------------- model and optimiser --
  model = models.create(config.model.name, config.dataset.num_classes,
                        dtype=jnp.dtype(config.model.dtype),
                        conv_rules=config.model.conv_rules)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, pre.size, pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=sharding.replicated(mesh))(init_rng, dummy)
  if config.model.pretrained:
    from danil_jax import weights  # torch-free, but only needed here
    variables = weights.merge_pretrained(
        variables, weights.load(config.model.name, config.model.pretrained),
        head=model_info.head)
    # Each host loaded the same file: replicate without comparing copies.
    variables = sharding.replicate(variables, mesh)
  tx = steps.make_optimizer(config.optim, steps_per_epoch, config.num_epochs)
  state = sharding.replicate(
      steps.create_train_state(model, variables, tx, state_rng), mesh)

  # ------------------------------------------------------- compiled steps --
  replicated, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  loss_kw = dict(lam=config.danil.lam, eps=config.danil.eps,
                 reduction=config.danil.reduction,
                 misclassified_only=config.danil.misclassified_only,
                 map_dtype=config.danil.map_dtype)
  train_step = jax.jit(
      functools.partial(steps.train_step, method=config.method,
                        keep_ratio=config.ohem.keep_ratio,
                        skip_correct=config.danil.skip_correct, **loss_kw),
      in_shardings=(replicated, data), out_shardings=(replicated, replicated),
      donate_argnums=0)
  gradient_share = jax.jit(
      functools.partial(steps.distraction_gradient_share, **loss_kw),
      in_shardings=(replicated, data), out_shardings=replicated)
  eval_step = jax.jit(steps.eval_step, in_shardings=(replicated, data),
                      out_shardings=replicated)

  # ----------------------------------------------------------- evaluation --
  # With a validation split, every epoch scores it and keeps the best model
  # by `select_by`; the final report scores eval_split with best and last.
  # Without (the paper's protocol), every epoch scores eval_split.
  val_split = evaluation.validation_split(config, builder.info.splits)
  epoch_split = val_split or config.dataset.eval_split
  select_by = evaluation.select_by(config)
  split_metadata = {}

  def evaluate(state, split):
    if split not in split_metadata:
      split_metadata[split] = evaluation.read_metadata(builder, split)
    predictions = evaluation.predict_split(
        eval_step, state, builder.as_data_source(split), pre=pre,
        global_batch_size=config.input.eval_batch_size, mesh=mesh,
        metadata=split_metadata[split], num_workers=config.input.num_workers)
    return predictions, evaluation.report(predictions, class_names,
                                          config.eval)

  # --------------------------------------------------------------- resume --
  manager = checkpointing.make_manager(workdir,
                                       max_to_keep=config.keep_checkpoints)
  restored = checkpointing.restore_latest(
      manager, steps.state_to_checkpoint(state))
  if restored is not None:
    state = steps.state_from_checkpoint(state, restored)
  start_step = int(state.step)
  log = run_log.MetricsLog(workdir, enabled=is_chief)
  log.truncate_after(start_step)
  tensorboard = tb_writer.ScalarWriter(workdir, enabled=is_chief,
                                       start_step=start_step)
  best_manager = (best_checkpoint.make_manager(workdir, select_by)
                  if val_split else None)
  if start_step:
    logging.info('resumed from the checkpoint at step %d', start_step)
    if is_chief:
      print(f'Resuming from step {start_step} in {workdir}', flush=True)
  train_iter = iter(train_batches(start_step=start_step))

  # ---------------------------------------------------- train and evaluate --
  nonfinite = faults.NonFiniteMonitor(
      config.faults.max_nonfinite_in_a_row,
      functools.partial(checkpointing.latest_description, manager))

  def stop_if_preempted(step, force_sync=False):
    """On SIGTERM/SIGINT (any process): checkpoint at `step` and exit."""
    if not preemption.should_stop(step, force_sync=force_sync):
      return
    nonfinite.check()
    if manager.latest_step() != step:
      checkpointing.save(manager, step, steps.state_to_checkpoint(state))
    manager.wait_until_finished()
    preempted = faults.Preempted(step, str(manager.directory))
    if is_chief:
      print(f'\n{preempted}', flush=True)
    raise preempted

  step, report = start_step, None
  pending, last_log_time, last_log_step = [], time.time(), start_step
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch
      epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
      bar = tqdm(total=epoch_end - epoch * steps_per_epoch,
                 initial=step - epoch * steps_per_epoch, unit='step',
                 desc=f'epoch {epoch + 1}/{config.num_epochs}',
                 disable=not is_chief, dynamic_ncols=True)
      bar_time, bar_step = time.time(), step
      while step < epoch_end:
        stop_if_preempted(step)
        batch = sharding.global_batch(next(train_iter), mesh)
        log_now = (step + 1) % config.log_every_steps == 0
        share = (gradient_share(state, batch)
                 if log_now and config.method == 'danil' else None)
        state, step_metrics = train_step(state, batch)
        step += 1
        nonfinite.add(step, step_metrics)
        nonfinite.check(keep_last=1)  # the newest step may still be running
        pending.append(step_metrics)
        bar.update(1)
        if step % 5 == 0 or step == epoch_end:
          latest = jax.device_get(step_metrics)
          now = time.time()
          rate = (step - bar_step) * global_batch_size / (now - bar_time)
          bar.set_postfix(
              loss=f"{latest['loss']:.4f}", Ld=f"{latest['distraction']:.3g}",
              miscls=f"{latest['misclassified']:.2f}",
              img_s=f'{rate:.0f}')
          bar_time, bar_step = now, step
        if log_now:
          means = {k: float(np.mean(v)) for k, v in
                   jax.device_get(jax.tree.map(lambda *x: jnp.stack(x),
                                               *pending)).items()}
          if share is not None:
            means.update({k: float(v)
                          for k, v in jax.device_get(share).items()})
          now = time.time()
          means['images_per_s'] = ((step - last_log_step) * global_batch_size
                                   / (now - last_log_time))
          last_log_time, last_log_step, pending = now, step, []
          log.write(dict(kind='train', step=step, epoch=step / steps_per_epoch,
                         **means))
          tensorboard.write(dict(kind='train', step=step, **means))
        if step % config.checkpoint_every_steps == 0 and step < epoch_end:
          nonfinite.check()
          checkpointing.save(manager, step, steps.state_to_checkpoint(state))
      bar.close()
      nonfinite.check()
      predictions, report = evaluate(state, epoch_split)
      record = dict(kind='eval', step=step, epoch=step / steps_per_epoch,
                    split=epoch_split, **report)
      log.write(record)
      tensorboard.write(record)
      if select_by not in report:
        raise ValueError(f'config.eval.select_by / headline[0] is '
                         f'{select_by!r}, not a metric of this evaluation; '
                         f'expected one of {sorted(report)}')
      if val_split:
        best_checkpoint.maybe_save(best_manager, select_by, step,
                                   steps.state_to_checkpoint(state),
                                   report[select_by])
      if is_chief:
        plots.plot_curves(log.read(), workdir / plots.CURVES_FILE,
                          title=f'{config.dataset.name} {config.model.name} '
                          f'{config.method}')
        print(f'epoch {step / steps_per_epoch:.2f} {epoch_split}: '
              + metrics_lib.format_headline(report, config.eval.headline)
              + f" loss {report['loss']:.4f}", flush=True)
      checkpointing.save(manager, step, steps.state_to_checkpoint(state))
      if step < total_steps:
        stop_if_preempted(step, force_sync=True)
  finally:
    # A save still being written when an error ends the loop (a NaN right
    # after a checkpoint) is finished, not lost.
    manager.wait_until_finished()

  # ---------------------------------------------------------------- report --
  # eval_split with the last model (and the best one, with a validation
  # split); each also written to WORKDIR/eval/<split>_<model>/ as the
  # `evaluate` command writes it.
  test_split = config.dataset.eval_split
  if report is None or val_split:
    predictions, report = evaluate(state, test_split)
  finals = {'last': (step, predictions, report)}
  if val_split:
    best_manager.wait_until_finished()
    best_step, best_value = best_checkpoint.best_so_far(best_manager)
  if val_split and best_step is not None:
    best_state = steps.state_from_checkpoint(
        state, best_checkpoint.restore_state(
            best_manager.directory, best_step,
            steps.state_to_checkpoint(state)))
    finals['best'] = (best_step,) + evaluate(best_state, test_split)
  if is_chief:
    for model, (model_step, model_predictions, model_report) in finals.items():
      evaluation.write_outputs(
          workdir / 'eval' / f'{test_split}_{model}',
          model_predictions, dict(step=model_step, split=test_split,
                                  model=model, **model_report), class_names,
          title=f'{config.dataset.name} {test_split}, {model} model '
          f'(step {model_step})')
      if val_split:
        tensorboard.write(dict(kind='final', step=step, split=test_split,
                               model=model, **model_report))
    final = dict(step=step, split=test_split, model='last', **report)
    if 'best' in finals:
      final['best'] = dict(step=best_step, split=test_split,
                           selected_on=val_split, select_by=select_by,
                           selection_value=best_value, **finals['best'][2])
    (workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2))
    for model, (model_step, _, model_report) in finals.items():
      chosen = (f', best {val_split} {select_by}' if model == 'best' else '')
      print(f'\nFinal {test_split} metrics after {model_step} steps '
            f'({config.method}, {model} model{chosen}):\n'
            + metrics_lib.format_report(model_report, class_names,
                                        config.eval.headline), flush=True)
  tensorboard.close()
  if best_manager is not None:
    best_manager.close()
  manager.close()
  return report
