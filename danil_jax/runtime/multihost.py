"""Devices and hosts: the data-parallel mesh, and joining the hosts of a run.

The mesh (`make_mesh`) is one 1-D axis 'data' over every device of every
host. The batch is sharded over it and everything else is replicated.
Computations are written for the *global* batch and `jax.jit` partitions
them, so batch statistics (BatchNorm) and losses are over the global batch
and a run gives the same numbers on 1 or N devices, in one process or many
(input_pipeline makes the global batch itself independent of the hosts).

One process per host, joined by `jax.distributed` (`initialize`). The hosts
then meet at bounded barriers (`barrier`, `chief_first`), and an error on any
one of them ends all of them within about a second: the failing host posts its
message in the coordination service's key-value store (`end_every_host`) and
every other host watches that store from a background thread and exits
non-zero with the same message (`_watch_for_errors`), instead of waiting in a
collective until gloo's or NCCL's timeout.

Every function here is a no-op (or trivially true) in a one-process run.
"""

import atexit
import contextlib
import importlib.util
import itertools
import json
import os
import sys
import threading
import traceback

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

_ERRORS = 'danil_jax/errors/'
# How long a failing host keeps the coordination service up after posting its
# error, so the others read it before process 0 (which hosts it) goes away.
_LINGER_S = 2.0
_barrier_ids = itertools.count()
_agreement_ids = itertools.count()
_watcher = None


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
  _start_watcher()


def is_chief() -> bool:
  """Process 0 builds data and writes logs, plots and JSON files."""
  return jax.process_index() == 0


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def barrier(name: str, timeout_s: float) -> None:
  """Waits until every host gets here, for at most `timeout_s` seconds."""
  if jax.process_count() == 1:
    return
  barrier_id = f'danil_jax/{name}/{next(_barrier_ids)}'
  try:
    _client().wait_at_barrier(barrier_id, int(timeout_s * 1000))
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


def chiefs_value(name: str, value, timeout_s: float = 600.0):
  """Process 0's `value` (anything JSON holds), on every host.

  For a decision every host must take alike, which each could take from its
  own view (the best checkpoint by a metric, the latest checkpoint of a run
  still writing them): hosts that disagree would hang in the next collective
  or write diverging state. Every host must call it in the same order.
  """
  value = json.loads(json.dumps(value))  # the same type on every host
  if jax.process_count() == 1:
    return value
  key = f'danil_jax/chief/{name}/{next(_agreement_ids)}'
  if is_chief():
    _client().key_value_set(key, json.dumps(value))
    return value
  try:
    return json.loads(_client().blocking_key_value_get(
        key, int(timeout_s * 1000)))
  except jax.errors.JaxRuntimeError as e:
    raise TimeoutError(
        f'process {jax.process_index()} waited {timeout_s:.0f} s for process '
        f'0\'s {name!r}; it is stuck or gone: {e}') from None


def same_on_every_host(name: str, value, what: str) -> None:
  """Raises ValueError on each host whose `value` differs from process 0's
  (which then ends every host, `end_every_host`); `what` names it."""
  chiefs = chiefs_value(name, value)
  if json.loads(json.dumps(value)) != chiefs:
    raise ValueError(
        f'{what} differs between the hosts: process 0 has {chiefs}, process '
        f'{jax.process_index()} has {json.loads(json.dumps(value))}; every '
        'host must see the same files (a shared disk or a bucket)')


def post_error(message: str) -> None:
  """Tells every other host that this one failed, with `message`."""
  if jax.process_count() == 1:
    return
  try:
    _client().key_value_set(f'{_ERRORS}{jax.process_index()}', message,
                            allow_overwrite=True)
  except Exception:  # pylint: disable=broad-except
    pass  # the service is gone: the others learn it from their own client


def _error_message(error: BaseException) -> str:
  if isinstance(error, SystemExit) and isinstance(error.code, str):
    return error.code.removeprefix('error: ')
  return f'{type(error).__name__}: {error}'


@contextlib.contextmanager
def end_every_host():
  """An exception in the block ends every host with its message, status 1.

  In a one-process run the exception simply propagates, as does
  faults.Preempted (status faults.EXIT_PREEMPTED) everywhere.
  """
  from danil_jax.runtime import faults  # pylint: disable=g-import-not-at-top
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-except
    if _watcher is None or isinstance(e, faults.Preempted) or (
        isinstance(e, SystemExit) and e.code in (None, 0)):
      # One process, a clean exit, or a preemption: every process stops
      # after the same step (faults.PreemptionGuard) and leaves with the
      # same status through jax's exit handlers, ending no other host.
      raise
    message = (f'process {jax.process_index()} of {jax.process_count()} '
               f'failed: {_error_message(e)}')
    post_error(message)
    if not isinstance(e, SystemExit):
      traceback.print_exc()
    print(f'error: {message}', file=sys.stderr, flush=True)
    _stop_watcher()
    if is_chief():  # it hosts the coordination service
      threading.Event().wait(_LINGER_S)
    # Skip jax's exit handlers: their shutdown barrier would wait for the
    # hosts that this error just ended.
    os._exit(1)


class _Watcher(threading.Thread):
  """Ends this process when another host posts an error."""

  def __init__(self, poll_s: float = 0.5):
    super().__init__(name='danil_jax_error_watcher', daemon=True)
    self.poll_s = poll_s
    self.stop = threading.Event()

  def run(self):
    client, me = _client(), str(jax.process_index())
    while not self.stop.wait(self.poll_s):
      try:
        posted = client.key_value_dir_get(_ERRORS)
      except Exception:  # pylint: disable=broad-except
        return  # shutting down
      for key, message in posted:
        if key.rsplit('/', 1)[-1] != me and not self.stop.is_set():
          print(f'error: {message}', file=sys.stderr, flush=True)
          os._exit(1)


def _start_watcher() -> None:
  global _watcher
  if jax.process_count() == 1 or _watcher is not None:
    return
  _watcher = _Watcher()
  _watcher.start()
  # atexit runs last-registered first: this stops the watcher before jax's
  # own handler shuts the distributed client down.
  atexit.register(_stop_watcher)


def _stop_watcher() -> None:
  if _watcher is not None:
    _watcher.stop.set()
    if _watcher is not threading.current_thread():
      _watcher.join(timeout=5)


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
