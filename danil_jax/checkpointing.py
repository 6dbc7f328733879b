"""Orbax checkpoints of the whole run: train state, RNG and input iterator.

Each checkpoint holds the parameters, BatchNorm statistics, optimiser state,
step, RNG key and the grain iterator position, so rerunning the same command
resumes exactly where the last checkpoint left off. Orbax writes into a
temporary directory and renames it when complete: a run killed mid-save
leaves the previous checkpoint as the latest.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         data=grain.checkpoint.CheckpointHandler()))


def save(manager: ocp.CheckpointManager, step: int, state_tree,
         data_iterator) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_tree),
      data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)


def restore_latest(manager: ocp.CheckpointManager, state_tree, data_iterator):
  """Restores into `data_iterator` in place; returns the state tree or None.

  `state_tree` gives the structure, shapes, dtypes and shardings to restore.
  """
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored['state']
