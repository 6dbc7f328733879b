"""Data-parallel sharding helpers: one 1-D mesh over every device of every host.

The batch is sharded over the mesh axis 'data' and everything else is
replicated. Computations are written for the *global* batch and `jax.jit`
partitions them, so batch statistics (BatchNorm) and losses are over the global
batch and a run gives the same numbers on 1 or N devices, in one process or
many (input_pipeline makes the global batch itself independent of the hosts).
"""

import jax
import jax.numpy as jnp
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
  """Every leaf replicated over `mesh`, built from this host's copy.

  Each host must hold the same values (same seed, same files). Unlike
  `jax.device_put`, no host compares its copy with the others': with many
  hosts that check gathers every leaf from every host.
  """
  target = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)  # already on every device; a local copy
    # jnp.asarray canonicalises dtypes (int64 -> int32) as device_put would.
    host = np.asarray(x if isinstance(x, jax.Array) else jnp.asarray(x))
    return jax.make_array_from_callback(host.shape, target,
                                        lambda index: host[index])

  return jax.tree.map(put, tree)
