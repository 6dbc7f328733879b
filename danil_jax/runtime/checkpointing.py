"""Orbax checkpoints of the whole run: the train state and its RNG.

Each checkpoint holds the parameters, BatchNorm statistics, optimiser state,
step and RNG key, and the weight EMA where the run keeps one (ema.py). The
input position follows from the step (input_pipeline.train_loader), so
rerunning the same command resumes exactly where the last checkpoint left
off, on any number of hosts: orbax restores every array onto the shardings
of the given state. Orbax writes into a temporary directory and renames it
when complete: a run killed mid-save leaves the previous checkpoint as the
latest. The workdir may be any path etils.epath handles (a local disk,
`gs://...`).

Every manager, of the latest checkpoints (`make_manager`) and of the best
one (evaluation/best_checkpoint.py), comes from `manager_at`.
"""

import sys
import time

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from danil_jax.runtime import ema


def absolute_path(path) -> epath.Path:
  """`path` as an absolute epath; `gs://...` and the like stay as they are."""
  path = epath.Path(path).expanduser()
  # resolve() would turn 'gs://b/r' into '$PWD/gs:/b/r'.
  return path if path.is_absolute() else path.resolve()


# The run's latest checkpoints, those a rerun resumes from, under the workdir.
LATEST_DIR = 'checkpoints'


def manager_at(directory, *, read_only: bool = False,
               **options) -> ocp.CheckpointManager:
  """The orbax manager of the checkpoints in `directory`, each holding a
  train state tree as its item 'state' (`save`, `restore_step`).

  `options` are further `ocp.CheckpointManagerOptions` (max_to_keep,
  best_fn, ...). A read-only manager neither creates nor deletes anything.
  """
  return ocp.CheckpointManager(
      absolute_path(directory),
      options=ocp.CheckpointManagerOptions(
          create=not read_only, read_only=read_only, **options),
      item_handlers=dict(state=ocp.StandardCheckpointHandler()))


def make_manager(workdir, *, max_to_keep: int) -> ocp.CheckpointManager:
  """The manager of the run's latest checkpoints, `WORKDIR/checkpoints`."""
  return manager_at(absolute_path(workdir) / LATEST_DIR,
                    max_to_keep=max_to_keep)


def saved_steps(directory) -> list[int]:
  """The steps of the complete checkpoints in `directory`, ascending ([] if
  there is none, or no directory): orbax leaves out a save in progress."""
  return sorted(ocp.utils.checkpoint_steps(absolute_path(directory)))


def save(manager: ocp.CheckpointManager, step: int, state_tree, *,
         metrics: dict | None = None) -> None:
  """Saves `state_tree` as checkpoint `step`, with `metrics` for the
  manager's best_fn where it keeps the best."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_tree)), metrics=metrics, force=True)


def restore_latest(manager: ocp.CheckpointManager, state_tree):
  """Returns the latest checkpoint's state tree, or None if there is none.

  `state_tree` gives the structure, shapes, dtypes and shardings to restore.
  A checkpoint that cannot be read (a damaged file, a disk error) is moved
  aside to `<workdir>/checkpoints.unreadable/` with a warning naming it and
  the one restored instead, the newest readable one before it. If none can be
  read, raises CheckpointError naming each with its error.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = restore_step(manager, step, state_tree)
    except Exception as e:  # pylint: disable=broad-except
      failures.append((step, e))
      continue
    if failures:
      _move_aside(manager, [s for s, _ in failures])
      for bad_step, e in failures:
        logging.warning(
            'checkpoint %s cannot be read (%s: %s); resuming from the one '
            'before it, %s. The unreadable one is kept in %s.',
            _step_dir(manager, bad_step), type(e).__name__, e,
            _step_dir(manager, step), _unreadable_dir(manager))
        print(f'warning: checkpoint {_step_dir(manager, bad_step)} cannot be '
              f'read ({type(e).__name__}); resuming from '
              f'{_step_dir(manager, step)} instead', file=sys.stderr,
              flush=True)
    return restored
  if failures:
    raise CheckpointError(
        f'no checkpoint in {manager.directory} can be read:\n  ' + '\n  '.join(
            f'step {s}: {type(e).__name__}: {e}' for s, e in failures)
        + '\nMove the directory away to start afresh, or use another '
        '--workdir.')
  return None


def restore_step(manager: ocp.CheckpointManager, step: int, state_tree):
  """Checkpoint `step`'s state tree, restored with the structure, shapes,
  dtypes and shardings of `state_tree`; a weight EMA on one side only is
  reconciled (ema.restore_target, ema.complete), not an error."""
  metadata = manager.item_metadata(step)
  saved = metadata['state'] if metadata is not None else None
  saved_keys = set(saved.keys()) if saved is not None else set(state_tree)
  target = ema.restore_target(state_tree, saved_keys)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']
  return ema.complete(restored, state_tree, _step_dir(manager, step))


class CheckpointError(RuntimeError):
  """No checkpoint of a run can be restored."""


def latest_description(manager: ocp.CheckpointManager) -> str:
  """The newest saved checkpoint's directory, for messages."""
  step = manager.latest_step()
  if step is None:
    return 'none (the run has saved no checkpoint yet)'
  return f'{_step_dir(manager, step)} (step {step})'


def _step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(manager.directory) / str(step)


def _unreadable_dir(manager: ocp.CheckpointManager) -> epath.Path:
  directory = epath.Path(manager.directory)
  return directory.with_name(directory.name + '.unreadable')


def _move_aside(manager: ocp.CheckpointManager, bad_steps) -> None:
  """Moves unreadable checkpoints out of the manager's sight.

  Otherwise the resumed run could not save its own checkpoint at their step
  (orbax does not overwrite one) and the next resume would try them again.
  """
  if jax.process_index() == 0:
    target = _unreadable_dir(manager)
    target.mkdir(parents=True, exist_ok=True)
    for step in bad_steps:
      _step_dir(manager, step).rename(target / f'{step}.{int(time.time())}')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('checkpointing._move_aside')
  manager.reload()
