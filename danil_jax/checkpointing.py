"""Orbax checkpoints of the whole run: the train state and its RNG.

Each checkpoint holds the parameters, BatchNorm statistics, optimiser state,
step and RNG key. The input position follows from the step
(input_pipeline.train_loader), so rerunning the same command resumes exactly
where the last checkpoint left off, on any number of hosts: orbax restores
every array onto the shardings of the given state. Orbax writes into a
temporary directory and renames it when complete: a run killed mid-save
leaves the previous checkpoint as the latest. The workdir may be any path
etils.epath handles (a local disk, `gs://...`).
"""

import jax
import orbax.checkpoint as ocp
from etils import epath


def absolute_path(path) -> epath.Path:
  """`path` as an absolute epath; `gs://...` and the like stay as they are."""
  path = epath.Path(path).expanduser()
  # resolve() would turn 'gs://b/r' into '$PWD/gs:/b/r'.
  return path if path.is_absolute() else path.resolve()


def make_manager(workdir, *, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      absolute_path(workdir) / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_handlers=dict(state=ocp.StandardCheckpointHandler()))


def save(manager: ocp.CheckpointManager, step: int, state_tree) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_tree)), force=True)


def restore_latest(manager: ocp.CheckpointManager, state_tree):
  """Returns the latest checkpoint's state tree, or None if there is none.

  `state_tree` gives the structure, shapes, dtypes and shardings to restore.
  """
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return restored['state']
