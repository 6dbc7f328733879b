"""Training and evaluation of Base, OHEM and DANIL, data-parallel over a mesh.

`train_and_evaluate(config, workdir)` runs top to bottom in marked sections:
setup, data, model and optimiser, compiled steps, resume, the training loop
with per-epoch evaluation (danil_jax.trainer.train_loop, which also holds the
parts they share), the final report. Rerunning it with the same workdir
resumes from the latest checkpoint.
"""

import contextlib
import functools
import json

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from danil_jax import models
from danil_jax.evaluation import best_checkpoint
from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.evaluation import scoring as evaluation
from danil_jax.runtime import checkpointing
from danil_jax.runtime import config_checks
from danil_jax.runtime import data_pin
from danil_jax.runtime import faults
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost
from danil_jax.runtime import run_config
from danil_jax.runtime import run_log
from danil_jax.runtime import steps
from danil_jax.trainer import train_loop
from danil_jax import data_prep


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains per `config`, evaluating each epoch; returns the final report.

  Raises faults.Preempted (a SystemExit, status faults.EXIT_PREEMPTED) after
  saving a checkpoint when SIGTERM/SIGINT arrives, and faults.NonFiniteError
  per config.faults.max_nonfinite_in_a_row.
  """
  with faults.PreemptionGuard() as preemption:
    return _train_and_evaluate(config, workdir, preemption)


# ------------------------------------------------------------------ setup --


def _check_and_pin(config: ml_collections.ConfigDict, workdir: epath.Path,
                   is_chief: bool) -> jax.sharding.Mesh:
  """Checks the config and pins it to the workdir; returns the device mesh.

  Fault handling: bad values, damaged weights and a changed config are
  named before any data is built or model compiled.
  """
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
  for key in ('global_batch_size', 'eval_batch_size'):  # validates both
    try:
      multihost.per_process_batch_size(config.input[key], mesh)
    except ValueError as e:
      raise ValueError(f'config.input.{key}: {e}') from None
  logging.info('%d devices over %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices())
  return mesh


# ------------------------------------------------------------------- data --


def _open_data(config: ml_collections.ConfigDict,
               is_chief: bool) -> train_loop.Data:
  # One build, many readers: process 0 builds a missing data set while the
  # others wait; then they open it. Its failure ends every host at once.
  with multihost.chief_first('dataset',
                             config.distributed_init.data_build_timeout_s):
    builder = data_prep.open_dataset(config.dataset, build=is_chief)
  config_checks.check_splits(config, builder)
  class_names = list(builder.info.features['label'].names)
  train_source = builder.as_data_source(config.dataset.train_split)
  multihost.same_on_every_host(
      'dataset', [class_names, len(train_source)],
      'the data set (its classes, the number of training images)')
  if config.dataset.num_classes not in (0, len(class_names)):
    raise config_checks.ConfigError(
        f'config.dataset.num_classes is {config.dataset.num_classes} but '
        f'{config.dataset.name!r} has {len(class_names)} classes: '
        f'{class_names} (0 takes them from the data)')
  model_info = models.info(config.model.name)
  pre = input_pipeline.Preprocessing(
      size=config.dataset.image_size or model_info.input_size,
      mean=model_info.mean, std=model_info.std, augment=config.input.augment)
  steps_per_epoch = len(train_source) // config.input.global_batch_size
  total_steps = steps_per_epoch * config.num_epochs
  if config.max_steps >= 0:
    total_steps = min(total_steps, config.max_steps)
  return train_loop.Data(builder, class_names, train_source, pre, model_info,
                         steps_per_epoch, total_steps)


def _train_batches(run: train_loop.Run, start_step: int):
  """An iterator over this process's slices of global batches start_step,
  start_step + 1, ..."""
  config = run.config
  return iter(input_pipeline.train_loader(
      run.dataset.train_source,
      global_batch_size=config.input.global_batch_size, pre=run.dataset.pre,
      seed=config.seed, start_step=start_step,
      num_workers=config.input.num_workers))


# ---------------------------------------------------- model and optimiser --


def _initial_state(run: train_loop.Run) -> steps.TrainState:
  """The model's initial (or pretrained) weights and optimiser, replicated."""
  config, dataset, mesh = run.config, run.dataset, run.mesh
  model = models.create(config.model.name, len(dataset.class_names),
                        dtype=jnp.dtype(config.model.dtype),
                        conv_rules=config.model.conv_rules)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, dataset.pre.size, dataset.pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=multihost.replicated(mesh))(init_rng, dummy)
  if config.model.pretrained:
    from danil_jax.models import weights  # torch-free, but only needed here
    variables = weights.merge_pretrained(
        variables, weights.load(config.model.name, config.model.pretrained),
        head=dataset.model_info.head)
    # Each host loaded the same file: replicate without comparing copies.
    variables = multihost.replicate(variables, mesh)
  tx = steps.make_optimizer(config.optim, dataset.steps_per_epoch,
                            config.num_epochs)
  return multihost.replicate(
      steps.create_train_state(model, variables, tx, state_rng,
                               ema=config.optim.ema_decay > 0), mesh)


# ------------------------------------------------------- the whole run --


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preemption: faults.PreemptionGuard) -> dict:
  # ---------------------------------------------------------------- setup --
  # Any path etils.epath handles: a local or shared disk, gs://...
  workdir = checkpointing.absolute_path(workdir)
  is_chief = multihost.is_chief()
  mesh = _check_and_pin(config, workdir, is_chief)

  # ----------------------------------------------------------------- data --
  run = train_loop.Run(config, workdir, is_chief, mesh,
                       _open_data(config, is_chief))
  data_pin.pin(workdir, run.dataset.builder, write=is_chief,
               allow_change=config.faults.allow_config_change)

  # ----------------------------------------------- model and optimiser --
  state = _initial_state(run)

  # ------------------------------------------------------- compiled steps --
  replicated, data = multihost.replicated(mesh), multihost.data_sharding(mesh)
  loss_kw = dict(lam=config.danil.lam, eps=config.danil.eps,
                 reduction=config.danil.reduction,
                 misclassified_only=config.danil.misclassified_only,
                 map_dtype=config.danil.map_dtype)
  train_step = jax.jit(
      functools.partial(steps.train_step, method=config.method,
                        keep_ratio=config.ohem.keep_ratio,
                        skip_correct=config.danil.skip_correct,
                        ema_decay=config.optim.ema_decay, **loss_kw),
      in_shardings=(replicated, data), out_shardings=(replicated, replicated),
      donate_argnums=0)
  gradient_share = jax.jit(
      functools.partial(steps.distraction_gradient_share, **loss_kw),
      in_shardings=(replicated, data), out_shardings=replicated)
  eval_step = evaluation.jit_eval_step(mesh)
  # The final report's, with test-time augmentation (none per epoch: model
  # selection stays as cheap as one forward).
  final_eval_step = (evaluation.jit_eval_step(mesh, config.eval.tta)
                     if config.eval.tta != 'none' else eval_step)

  # ----------------------------------------------------------- evaluation --
  evaluate = train_loop.Evaluation(run, eval_step, final_eval_step)

  # --------------------------------------------------------------- resume --
  state, outputs = _resume(run, state, evaluate)
  # The input position follows from the step: no iterator state to restore.
  # Closed however the run ends, so grain's worker processes and their shared
  # memory go with it.
  with contextlib.closing(_train_batches(run, int(state.step))) as train_iter:

    # -------------------------------------------------- train and evaluate --
    loop = train_loop.TrainingLoop(run, train_step, gradient_share, evaluate,
                                   outputs, preemption)
    state, step, last_epoch = loop.run(state, train_iter)

  # ---------------------------------------------------------------- report --
  finals, best_value = _final_evaluations(run, state, step, last_epoch,
                                          evaluate, outputs)
  if is_chief:
    _write_final_report(run, step, finals, best_value, evaluate, outputs)
  outputs.close()
  return finals['last'].report


# ----------------------------------------------------------------- resume --


def _resume(run: train_loop.Run, state, evaluate: train_loop.Evaluation):
  """(state at the latest checkpoint, or as given; the run's outputs), the
  logs cut back to that step."""
  config, workdir = run.config, run.workdir
  manager = checkpointing.make_manager(workdir,
                                       max_to_keep=config.keep_checkpoints)
  multihost.same_on_every_host(
      'checkpoint', manager.latest_step(),
      'the latest checkpoint step in WORKDIR/checkpoints')
  restored = checkpointing.restore_latest(
      manager, steps.state_to_checkpoint(state))
  if restored is not None:
    state = steps.state_from_checkpoint(state, restored)
  start_step = int(state.step)
  log = run_log.MetricsLog(workdir, enabled=run.is_chief)
  log.truncate_after(start_step)
  tensorboard = run_log.ScalarWriter(workdir, enabled=run.is_chief,
                                     start_step=start_step)
  best_manager = (best_checkpoint.make_manager(workdir, evaluate.select_by)
                  if evaluate.val_split else None)
  if start_step:
    logging.info('resumed from the checkpoint at step %d', start_step)
    if run.is_chief:
      print(f'Resuming from step {start_step} in {workdir}', flush=True)
  return state, train_loop.Outputs(manager, best_manager, log, tensorboard)


# ----------------------------------------------------------------- report --


def _final_evaluations(run: train_loop.Run, state, step: int,
                       last_epoch: train_loop.Scored | None,
                       evaluate: train_loop.Evaluation,
                       outputs: train_loop.Outputs):
  """({'last': Scored[, 'last_<other weights>': Scored][, 'best': Scored]}
  on eval_split, the best model's select_by value or None).

  The last epoch's predictions are reused when it scored eval_split and
  there is no TTA to add; with a validation split the best model (if any
  was kept) is scored too, and each model's temperature is fitted on it.
  Each is scored with evaluate.weights; with a weight EMA the last model
  also with the other weights (`last_raw` or `last_ema`), as timm scores
  both.
  """
  test_split = run.config.dataset.eval_split
  reuse = None if last_epoch is None else last_epoch.predictions
  finals, best_value = {'last': train_loop.Scored(
      step, *evaluate.final(state, test_split, reuse=reuse),
      weights=evaluate.weights)}, None
  if state.ema is not None:
    other = 'raw' if evaluate.weights == 'ema' else 'ema'
    finals[f'last_{other}'] = train_loop.Scored(
        step, *evaluate.final(state, test_split, weights=other),
        weights=other)
  if evaluate.val_split:
    outputs.best_manager.wait_until_finished()
    best_step, best_value = best_checkpoint.best_so_far(outputs.best_manager)
    if best_step is not None:
      best_state = steps.state_from_checkpoint(
          state, best_checkpoint.restore_state(
              outputs.best_manager.directory, best_step,
              steps.state_to_checkpoint(state)))
      finals['best'] = train_loop.Scored(
          best_step, *evaluate.final(best_state, test_split),
          weights=evaluate.weights)
  return finals, best_value


def _write_final_report(run: train_loop.Run, step: int, finals: dict,
                        best_value, evaluate: train_loop.Evaluation,
                        outputs: train_loop.Outputs) -> None:
  """eval_split's scores, each also written to WORKDIR/eval/<split>_<name>/
  as the `evaluate` command writes it, to final_metrics.json and stdout;
  each names its model (checkpoint) and weights."""
  config, class_names = run.config, run.dataset.class_names
  test_split = config.dataset.eval_split
  with_ema = any(name.startswith('last_') for name in finals)
  heads = {}
  for name, scored in finals.items():
    model = 'best' if name == 'best' else 'last'
    heads[name] = dict(step=scored.step, split=test_split, model=model,
                       weights=scored.weights)
    evaluation.write_outputs(
        run.workdir / 'eval' / evaluation.output_name(test_split, name,
                                                      config.eval.tta),
        scored.predictions, dict(heads[name], **scored.report), class_names,
        title=f'{config.dataset.name} {test_split}, {model} model '
        f'(step {scored.step}' + (f', {scored.weights} weights)' if with_ema
                                  else ')'))
    if evaluate.val_split or with_ema:
      outputs.tensorboard.write(dict(kind='final', step=step, split=test_split,
                                     model=name, **scored.report))
  final = dict(heads['last'], step=step, **finals['last'].report)
  for name in finals:
    if name.startswith('last_'):  # the last model's other weights
      final[name] = dict(heads[name], **finals[name].report)
  if 'best' in finals:
    final['best'] = dict(heads['best'], selected_on=evaluate.val_split,
                         select_by=evaluate.select_by,
                         selection_value=best_value, **finals['best'].report)
  (run.workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2))
  for name, scored in finals.items():
    chosen = (f', best {evaluate.val_split} {evaluate.select_by}'
              if name == 'best' else '')
    if with_ema:
      chosen += f', {scored.weights} weights'
    print(f"\nFinal {test_split} metrics after {scored.step} steps "
          f"({config.method}, {heads[name]['model']} model{chosen}):\n"
          + metrics_lib.format_report(scored.report, class_names,
                                      config.eval.headline), flush=True)
