"""Training and evaluation of Base, OHEM and DANIL, data-parallel over a mesh.

`train_and_evaluate(config, workdir)` runs top to bottom in marked sections:
setup, data, model and optimiser, compiled steps, resume, the training loop
with per-epoch evaluation. Rerunning it with the same workdir resumes from
the latest checkpoint.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import data_prep
from danil_jax import checkpointing
from danil_jax import input_pipeline
from danil_jax import metrics as metrics_lib
from danil_jax import models
from danil_jax import plots
from danil_jax import run_log
from danil_jax import sharding
from danil_jax import steps


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains per `config`, evaluating each epoch; returns the final report."""
  # ---------------------------------------------------------------- setup --
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if config.method not in steps.METHODS:
    raise ValueError(f'config.method must be one of {steps.METHODS}, got '
                     f'{config.method!r}')
  mesh = sharding.make_mesh()
  for key in ('global_batch_size', 'eval_batch_size'):  # validates both
    try:
      sharding.per_process_batch_size(config.input[key], mesh)
    except ValueError as e:
      raise ValueError(f'config.input.{key}: {e}') from None
  if is_chief:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info('%d devices over %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices())

  # ----------------------------------------------------------------- data --
  builder = data_prep.prepare(
      config.dataset.name, data_dir=config.dataset.data_dir,
      manual_dir=config.dataset.manual_dir or None,
      config=config.dataset.builder_config or None)
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
  train_iter = iter(input_pipeline.train_loader(
      train_source, global_batch_size=global_batch_size, pre=pre,
      seed=config.seed, num_workers=config.input.num_workers))

  # ----------------------------------------------- model and optimiser --
  model = models.create(config.model.name, config.dataset.num_classes,
                        dtype=jnp.dtype(config.model.dtype))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, pre.size, pre.size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False),
                      out_shardings=sharding.replicated(mesh))(init_rng, dummy)
  if config.model.pretrained:
    from danil_jax import weights  # torch-free, but only needed here
    variables = weights.merge_pretrained(
        variables, weights.load(config.model.name, config.model.pretrained),
        head=model_info.head)
  tx = steps.make_optimizer(config.optim, steps_per_epoch, config.num_epochs)
  state = sharding.replicate(
      steps.create_train_state(model, variables, tx, state_rng), mesh)

  # ------------------------------------------------------- compiled steps --
  replicated, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  loss_kw = dict(lam=config.danil.lam, eps=config.danil.eps,
                 reduction=config.danil.reduction)
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

  def evaluate(state):
    predictions, labels, ce_sum = [], [], 0.0
    batches = input_pipeline.eval_batches(
        eval_source, global_batch_size=config.input.eval_batch_size, pre=pre,
        num_workers=config.input.num_workers)
    for local_batch in batches:
      out = jax.device_get(
          eval_step(state, sharding.global_batch(local_batch, mesh)))
      predictions.append(out['prediction'][out['mask']])
      labels.append(out['label'][out['mask']])
      ce_sum += float(out['ce_sum'])
    labels, predictions = np.concatenate(labels), np.concatenate(predictions)
    assert len(labels) == len(eval_source), (len(labels), len(eval_source))
    report = metrics_lib.classification_report(labels, predictions,
                                               class_names)
    report['loss'] = ce_sum / len(labels)
    return report

  # --------------------------------------------------------------- resume --
  manager = checkpointing.make_manager(workdir,
                                       max_to_keep=config.keep_checkpoints)
  restored = checkpointing.restore_latest(
      manager, steps.state_to_checkpoint(state), train_iter)
  if restored is not None:
    state = steps.state_from_checkpoint(state, restored)
  start_step = int(state.step)
  log = run_log.MetricsLog(workdir, enabled=is_chief)
  log.truncate_after(start_step)
  if start_step:
    logging.info('resumed from the checkpoint at step %d', start_step)
    if is_chief:
      print(f'Resuming from step {start_step} in {workdir}', flush=True)

  # ---------------------------------------------------- train and evaluate --
  step, report = start_step, None
  pending, last_log_time, last_log_step = [], time.time(), start_step
  while step < total_steps:
    epoch = step // steps_per_epoch
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    bar = tqdm(total=epoch_end - epoch * steps_per_epoch,
               initial=step - epoch * steps_per_epoch, unit='step',
               desc=f'epoch {epoch + 1}/{config.num_epochs}',
               disable=not is_chief, dynamic_ncols=True)
    bar_time, bar_step = time.time(), step
    while step < epoch_end:
      batch = sharding.global_batch(next(train_iter), mesh)
      log_now = (step + 1) % config.log_every_steps == 0
      share = (gradient_share(state, batch)
               if log_now and config.method == 'danil' else None)
      state, step_metrics = train_step(state, batch)
      step += 1
      pending.append(step_metrics)
      bar.update(1)
      if step % 5 == 0 or step == epoch_end:
        latest = jax.device_get(step_metrics)
        now = time.time()
        bar.set_postfix(
            loss=f"{latest['loss']:.4f}", Ld=f"{latest['distraction']:.3g}",
            miscls=f"{latest['misclassified']:.2f}",
            img_s=f'{(step - bar_step) * global_batch_size / (now - bar_time):.0f}')
        bar_time, bar_step = now, step
      if log_now:
        means = {k: float(np.mean(v)) for k, v in
                 jax.device_get(jax.tree.map(lambda *x: jnp.stack(x),
                                             *pending)).items()}
        if share is not None:
          means.update({k: float(v) for k, v in jax.device_get(share).items()})
        now = time.time()
        means['images_per_s'] = ((step - last_log_step) * global_batch_size
                                 / (now - last_log_time))
        last_log_time, last_log_step, pending = now, step, []
        log.write(dict(kind='train', step=step, epoch=step / steps_per_epoch,
                       **means))
      if step % config.checkpoint_every_steps == 0 and step < epoch_end:
        checkpointing.save(manager, step, steps.state_to_checkpoint(state),
                           train_iter)
    bar.close()
    report = evaluate(state)
    log.write(dict(kind='eval', step=step, epoch=step / steps_per_epoch,
                   split=config.dataset.eval_split, **report))
    if is_chief:
      plots.plot_curves(log.read(), os.path.join(workdir, plots.CURVES_FILE),
                        title=f'{config.dataset.name} {config.model.name} '
                        f'{config.method}')
      print(f'epoch {step / steps_per_epoch:.2f} {config.dataset.eval_split}:'
            f" macro-F1 {report['macro_f1']:.4f} accuracy "
            f"{report['accuracy']:.4f} loss {report['loss']:.4f}", flush=True)
    checkpointing.save(manager, step, steps.state_to_checkpoint(state),
                       train_iter)
  manager.wait_until_finished()

  # ---------------------------------------------------------------- report --
  if report is None:  # nothing left to train: the run had already finished
    report = evaluate(state)
  if is_chief:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(dict(step=step, split=config.dataset.eval_split, **report), f,
                indent=2)
    print(f'\nFinal {config.dataset.eval_split} metrics after {step} steps '
          f'({config.method}):\n'
          + metrics_lib.format_report(report, class_names), flush=True)
  manager.close()
  return report
