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

def _mode(metric: str) -> str:
  return 'min' if metric in metrics_lib.LOWER_IS_BETTER else 'max'

def make_manager(workdir: str, metric: str, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the best checkpoint by `metric`."""
  worst = math.inf if _mode(metric) == 'min' else -math.inf
  return checkpointing.manager_at(
      checkpointing.absolute_path(workdir) / BEST_DIR, read_only=read_only,
      max_to_keep=1,
      # Synchronous: orbax reads a save's value back from disk, where an
      # asynchronous save still in flight has not put it yet (None, which
      # any value beat). One save per improving epoch at most.
      enable_async_checkpointing=False,
      best_fn=lambda m: worst if m['value'] is None else m['value'],
      best_mode=_mode(metric))

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
    checkpointing.save(manager, step, state_tree, metrics={'value': value})
  return better

def restore_state(directory: str, step: int, state_tree):
  """The train-state item of checkpoint `step` in `directory` (either
  manager's), restored with the structure and shardings of `state_tree`."""
  with checkpointing.manager_at(directory, read_only=True) as manager:
    if step not in manager.all_steps():
      raise ValueError(f'{directory} has no checkpoint of step {step}; it has '
                       f'{sorted(manager.all_steps())}')
    return checkpointing.restore_step(manager, step, state_tree)

def find_checkpoint(workdir: str, which: str) -> tuple[str, int]:
  """(directory, step) of 'best', 'last' or a step number of the run."""
  workdir = checkpointing.absolute_path(workdir)
  latest_dir = workdir / checkpointing.LATEST_DIR
  best_dir = workdir / BEST_DIR
  if which == 'best':
    steps = checkpointing.saved_steps(best_dir)
    if not steps:
      raise ValueError(
          f'{workdir} has no best checkpoint ({best_dir} is empty or absent): '
          'only runs with a validation split keep one; use '
          '--checkpoint=last')
    return str(best_dir), steps[-1]
  if which == 'last':
    steps = checkpointing.saved_steps(latest_dir)
    if not steps:
      raise ValueError(f'{workdir} has no checkpoint in {latest_dir}')
    return str(latest_dir), steps[-1]
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"--checkpoint must be 'best', 'last' or a step number, "
                     f'got {which!r}') from None
  for directory in (latest_dir, best_dir):
    if step in checkpointing.saved_steps(directory):
      return str(directory), step
  raise ValueError(f'{workdir} has no checkpoint of step {step}; it has '
                   f'{checkpointing.saved_steps(latest_dir)} (latest) and '
                   f'{checkpointing.saved_steps(best_dir)} (best)')
