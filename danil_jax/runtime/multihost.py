"""Devices and hosts: the data-parallel mesh, and joining the hosts of a run.

The mesh (`make_mesh`) is one 1-D axis 'data' over every device of every
host. The batch is sharded over it and everything else is replicated.
Computations are written for the *global* batch and `jax.jit` partitions
them, so batch statistics (BatchNorm) and losses are over the global batch
and a run gives the same numbers on 1 or N devices, in one process or many
(input_pipeline makes the global batch itself independent of the hosts).

One process per host, joined by `jax.distributed` (`initialize`). The hosts
meet at bounded barriers (`barrier`, `chief_first`) and take decisions
together through the coordination service's key-value store:
`chiefs_value` hands every host process 0's choice; `same_on_every_host`
gathers every host's value and, where they differ, raises the same
`host_failures.HostsDisagree` on every host before any of them enters a
collective. An error on one host ends every host with its message
(`host_failures`).

Every function here is a no-op (or trivially true) in a one-process run.
"""

import contextlib
import importlib.util
import itertools
import json
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from danil_jax.runtime import host_failures
from danil_jax.runtime.host_failures import HostsDisagree

_barrier_ids = itertools.count()
_agreement_ids = itertools.count()


def _cpu_platform() -> bool:
  """True if JAX will run on CPU: asked for, or no accelerator plugin there."""
  platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  accelerators = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                  'jax_rocm7_plugin', 'libtpu', 'jax_plugins')
  return not any(importlib.util.find_spec(m) for m in accelerators)


def initialize(settings) -> None:
  """Joins the hosts: `jax.distributed.initialize` plus the error watcher.

  Args:
    settings: `config.distributed_init`. Empty or non-positive fields are left
      to JAX's auto-detection (SLURM, Open MPI, TPU pods, Kubernetes); plain
      machines give `coordinator_address` ('host:port' of process 0),
      `num_processes` and `process_id`.
  """
  kwargs = {}
  if settings.coordinator_address:
    kwargs['coordinator_address'] = settings.coordinator_address
  if settings.num_processes > 0:
    kwargs['num_processes'] = settings.num_processes
  if settings.process_id >= 0:
    kwargs['process_id'] = settings.process_id
  if _cpu_platform():
    # Without CPU collectives a multi-process CPU job cannot run its first
    # all-reduce; gloo needs nothing but the coordination service.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  host_failures.start_watcher()


def is_chief() -> bool:
  """Process 0 builds data and writes logs, plots and JSON files."""
  return jax.process_index() == 0


def barrier(name: str, timeout_s: float) -> None:
  """Waits until every host gets here, for at most `timeout_s` seconds."""
  if jax.process_count() == 1:
    return
  barrier_id = f'danil_jax/{name}/{next(_barrier_ids)}'
  try:
    host_failures.client().wait_at_barrier(barrier_id, int(timeout_s * 1000))
  except jax.errors.JaxRuntimeError as e:
    raise TimeoutError(
        f'process {jax.process_index()} waited {timeout_s:.0f} s for every '
        f'host at {name!r}; some host is stuck or gone: {e}') from None


@contextlib.contextmanager
def chief_first(name: str, timeout_s: float):
  """Process 0 runs the block, then the others (after it, not alongside).

  A failure on process 0 inside the block ends the others through the error
  watcher, long before `timeout_s`.
  """
  if not is_chief():
    barrier(name, timeout_s)
  yield
  if is_chief():
    barrier(name, timeout_s)


def _plain(value):
  return json.loads(json.dumps(value))  # the same type on every host


def chiefs_value(name: str, value, timeout_s: float = 600.0):
  """Process 0's `value` (anything JSON holds), on every host.

  For a decision every host must take alike, which each could take from its
  own view (the best checkpoint by a metric, the latest checkpoint of a run
  still writing them): hosts that disagree would hang in the next collective
  or write diverging state. Every host must call it in the same order.
  """
  value = _plain(value)
  if jax.process_count() == 1:
    return value
  key = f'danil_jax/chief/{name}/{next(_agreement_ids)}'
  if is_chief():
    host_failures.client().key_value_set(key, json.dumps(value))
    return value
  return json.loads(_get(key, timeout_s, 'process 0', name))


def _get(key: str, timeout_s: float, whose: str, name: str) -> str:
  try:
    return host_failures.client().blocking_key_value_get(key, int(timeout_s * 1000))
  except jax.errors.JaxRuntimeError as e:
    raise TimeoutError(
        f'process {jax.process_index()} waited {timeout_s:.0f} s for '
        f'{whose}\'s {name!r}; it is stuck or gone: {e}') from None


def every_hosts_value(name: str, value, timeout_s: float = 600.0) -> list:
  """[process 0's `value`, process 1's, ...] (anything JSON holds), on every
  host. Every host must call it in the same order."""
  value = _plain(value)
  if jax.process_count() == 1:
    return [value]
  key = f'danil_jax/every/{name}/{next(_agreement_ids)}/'
  host_failures.client().key_value_set(f'{key}{jax.process_index()}', json.dumps(value))
  return [value if p == jax.process_index() else
          json.loads(_get(f'{key}{p}', timeout_s, f'process {p}', name))
          for p in range(jax.process_count())]


def same_on_every_host(name: str, value, what: str) -> None:
  """Raises HostsDisagree on every host, with one message, unless every host
  holds the same `value` (anything JSON holds; `what` names it).

  Decided together: each host sees every host's value, so none goes on into
  a collective that another has left.
  """
  values = every_hosts_value(name, value)
  differing = [p for p, v in enumerate(values) if v != values[0]]
  if not differing:
    return
  shown = [_difference(values[0], values[p]) for p in differing]
  raise HostsDisagree(
      f'{what} differs between the hosts: process 0 has {shown[0][0]}, '
      + ', '.join(f'process {p} has {mine}'
                  for p, (_, mine) in zip(differing, shown))
      + '; every host must see the same files and flags (a shared disk or a '
      'bucket, the same command)')


def _difference(chiefs, mine) -> tuple:
  """The two values, or of two dicts only the keys where they differ."""
  if not (isinstance(chiefs, dict) and isinstance(mine, dict)):
    return chiefs, mine
  keys = sorted(k for k in chiefs.keys() | mine.keys()
                if chiefs.get(k, '(absent)') != mine.get(k, '(absent)'))
  return ({k: chiefs.get(k, '(absent)') for k in keys},
          {k: mine.get(k, '(absent)') for k in keys})


# ------------------------------------------ the mesh and the global batch --


DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_slice(global_batch_size: int, mesh: Mesh | None = None, *,
               process_index: int | None = None,
               process_count: int | None = None) -> slice:
  """The rows of a global batch this host loads: process p of n takes the
  p-th of n contiguous blocks (the index and count default to JAX's). With
  `mesh`, the batch must also divide over its devices."""
  if mesh is not None and global_batch_size % mesh.size:
    raise ValueError(
        f'global batch size {global_batch_size} must be divisible by the '
        f'number of devices {mesh.size}')
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not divisible '
                     f'by the number of processes {process_count}')
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The number of rows of the global batch that this host loads."""
  rows = host_slice(global_batch_size, mesh)
  return rows.stop - rows.start


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
    if isinstance(x, jax.Array) and x.sharding == target:
      return x
    if (isinstance(x, jax.Array) and x.is_fully_addressable
        and x.sharding.is_equivalent_to(target, x.ndim)):
      # Same devices, but the sharding is part of the type a jit traces:
      # a single-device array would compile every step function once more
      # when the first step's output (sharded over the mesh) comes back.
      return jax.device_put(x, target)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)  # already on every device; a local copy
    # jnp.asarray canonicalises dtypes (int64 -> int32) as device_put would.
    host = np.asarray(x if isinstance(x, jax.Array) else jnp.asarray(x))
    return jax.make_array_from_callback(host.shape, target,
                                        lambda index: host[index])

  return jax.tree.map(put, tree)
