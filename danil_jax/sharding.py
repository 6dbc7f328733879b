"""Data-parallel sharding helpers: one 1-D mesh over every device of every host.

The batch is sharded over the mesh axis 'data' and everything else is
replicated. Computations are written for the *global* batch and `jax.jit`
partitions them, so batch statistics (BatchNorm) and losses are over the global
batch and a run gives the same numbers on 1 or N devices.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The share of the global batch that this host loads."""
  if global_batch_size % mesh.size:
    raise ValueError(
        f'global batch size {global_batch_size} must be divisible by the '
        f'number of devices {mesh.size}')
  return global_batch_size // jax.process_count()


def global_batch(local_batch, mesh: Mesh):
  """Assembles per-process numpy batches into globally sharded jax.Arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))
