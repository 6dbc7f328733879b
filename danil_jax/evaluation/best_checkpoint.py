"""The best checkpoint by a validation metric, and restoring any checkpoint's
model state.

The best model lives in its own orbax manager under
`WORKDIR/checkpoints_best` (one checkpoint, the train state only), beside the
latest ones in `WORKDIR/checkpoints` that resuming uses. Orbax records the
metric with each save, so a resumed run knows the best value so far.
"""

from __future__ import annotations

import math

import orbax.checkpoint as ocp

from danil_jax.evaluation import metrics as metrics_lib
from danil_jax.runtime import checkpointing
from danil_jax.runtime import multihost

BEST_DIR = 'checkpoints_best'
LATEST_DIR = 'checkpoints'

def _mode(metric: str) -> str:
  return 'min' if metric in metrics_lib.LOWER_IS_BETTER else 'max'

def make_manager(workdir: str, metric: str, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the best checkpoint by `metric`."""
  worst = math.inf if _mode(metric) == 'min' else -math.inf
  return ocp.CheckpointManager(
      checkpointing.absolute_path(workdir) / BEST_DIR,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=not read_only, read_only=read_only,
          # Synchronous: orbax reads a save's value back from disk, where an
          # asynchronous save still in flight has not put it yet (None, which
          # any value beat). One save per improving epoch at most.
          enable_async_checkpointing=False,
          best_fn=lambda m: worst if m['value'] is None else m['value'],
          best_mode=_mode(metric)),
      item_handlers=dict(state=ocp.StandardCheckpointHandler()))

def best_so_far(manager: ocp.CheckpointManager):
  """(step, value) of the kept checkpoint, or (None, None)."""
  step = manager.best_step()
  if step is None:
    return None, None
  return step, (manager.metrics(step) or {}).get('value')

def maybe_save(manager: ocp.CheckpointManager, metric: str, step: int,
               state_tree, value) -> bool:
  """Saves `state_tree` as the best checkpoint if `value` beats the kept
  one (None, an undefined metric, never does unless nothing is kept).

  With several hosts every host takes process 0's decision, with its
  `value`: each computes the metric from the same replicated predictions,
  but a host whose floating point differs in the last bit (another CPU,
  another BLAS), or that reads the kept value before process 0 has written
  it, would otherwise save alone, and hang in orbax's save.
  """
  value = None if value is None else float(value)
  best_step, best_value = best_so_far(manager)
  sign = -1.0 if _mode(metric) == 'min' else 1.0
  better = best_step is None or metrics_lib.is_better(
      None if value is None else sign * value,
      None if best_value is None else sign * best_value)
  value, better, save = multihost.chiefs_value(
      'best_checkpoint', [value, better, better and step != best_step])
  if save:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree)),
                 metrics={'value': value}, force=True)
  return better

def restore_state(directory: str, step: int, state_tree):
  """The train-state item of checkpoint `step` in `directory` (either
  manager's), restored with the structure and shardings of `state_tree`."""
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers=dict(state=ocp.StandardCheckpointHandler()))
  try:
    if step not in manager.all_steps():
      raise ValueError(f'{directory} has no checkpoint of step {step}; it has '
                       f'{sorted(manager.all_steps())}')
    return checkpointing.restore_step(manager, step, state_tree)
  finally:
    manager.close()

def find_checkpoint(workdir: str, which: str) -> tuple[str, int]:
  """(directory, step) of 'best', 'last' or a step number of the run."""
  workdir = checkpointing.absolute_path(workdir)
  latest_dir, best_dir = workdir / LATEST_DIR, workdir / BEST_DIR

  def steps_in(directory):
    if not directory.is_dir():
      return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit())

  if which == 'best':
    steps = steps_in(best_dir)
    if not steps:
      raise ValueError(
          f'{workdir} has no best checkpoint ({best_dir} is empty or absent): '
          'only runs with a validation split keep one; use '
          '--checkpoint=last')
    return str(best_dir), steps[-1]
  if which == 'last':
    steps = steps_in(latest_dir)
    if not steps:
      raise ValueError(f'{workdir} has no checkpoint in {latest_dir}')
    return str(latest_dir), steps[-1]
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"--checkpoint must be 'best', 'last' or a step number, "
                     f'got {which!r}') from None
  for directory in (latest_dir, best_dir):
    if step in steps_in(directory):
      return str(directory), step
  raise ValueError(f'{workdir} has no checkpoint of step {step}; it has '
                   f'{steps_in(latest_dir)} (latest) and {steps_in(best_dir)} '
                   '(best)')
