"""One host's error ends every host, each printing the root cause.

In a multi-host job a host that fails alone leaves the others waiting in a
collective (until gloo's or NCCL's timeout, 30 min) or, once its sockets
close, failing there with an error that names a connection, not the cause
(a data set missing on one host, a bad file, a crash). `end_every_host`
turns any error into the same message on every host, status 1:

- the failing host posts its message in the coordination service's
  key-value store, prints it and waits (at most `_LEAVE_WAIT_S`) at a barrier
  of the hosts still there, so that its connections do not close before the
  others have read it; process 0, which hosts the service, leaves last;
- every other host reads the message from a background thread (`_Watcher`)
  and ends with it, even while it waits in a collective;
- a host whose own collective fails first looks for a posted message before
  it prints, and only where none exists calls the roll: the hosts that do
  not answer within `_ROLL_CALL_S` (the watchers answer) are named gone
  (killed, out of memory, a lost machine). JAX's own liveness check
  (`get_live_nodes`, the heartbeat) tells it only after its heartbeat
  timeout, 100 s, and then aborts the process.

Errors that every host raises together (`HostsDisagree`, from
`multihost.same_on_every_host`) print the same message on every host.
"""

import atexit
import contextlib
import json
import os
import sys
import threading
import time
import traceback

import jax

# Key-value directories, one key per process index.
_ERRORS = 'danil_jax/errors/'  # the message of a host that failed
_PRESENT = 'danil_jax/present/'  # the hosts that answered a roll call
# How long a leaving host waits for the others to read its message, and a
# host calling the roll for the others' answers (the watchers poll every
# _POLL_S; on a busy CPU they answer later).
_LEAVE_WAIT_S = 10.0
_ROLL_CALL_S = 5.0
_POLL_S = 0.25
# Process 0 hosts the service: the others' JAX clients abort their process
# (SIGABRT, a stack trace under the message) once it is gone, so it leaves
# last, this long after the others left the barrier for their own exit.
_CHIEF_LAST_S = 3.0
_watcher = None
# Taken once, by whichever thread ends the process first.
_leaving = threading.Lock()


class HostsDisagree(ValueError):
  """Hosts hold different values of what must be one; raised on every host
  at once, with the same message."""


def client():
  """This process's client of JAX's coordination service."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


# ------------------------------------------------- posting and reading --


def _post_error(message: str, gone=()) -> None:
  try:
    client().key_value_set(
        f'{_ERRORS}{jax.process_index()}',
        json.dumps(dict(time=time.time(), message=message, gone=list(gone))),
        allow_overwrite=True)
  except Exception:  # pylint: disable=broad-except
    pass  # the service is gone: the others learn it from their own client


def _posted(directory: str) -> dict[int, str] | None:
  """{process index: value} under `directory`; None if the coordination
  service (process 0) is gone."""
  try:
    return {int(key.rsplit('/', 1)[-1]): value
            for key, value in client().key_value_dir_get(directory)}
  except Exception:  # pylint: disable=broad-except
    return None


def _peer_error() -> dict | None:
  """The first error another host posted: {'message', 'gone', 'time'}."""
  posted = [json.loads(v) for p, v in (_posted(_ERRORS) or {}).items()
            if p != jax.process_index()]
  return min(posted, key=lambda e: e['time']) if posted else None


def _answer_roll_call() -> bool:
  try:
    client().key_value_set(f'{_PRESENT}{jax.process_index()}', '',
                           allow_overwrite=True)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _roll_call() -> tuple[list[int], dict | None]:
  """(the hosts that did not answer within _ROLL_CALL_S, an error another
  host posted meanwhile). Process 0 hosts the service: unreachable, it is
  the one gone."""
  count = jax.process_count()
  if not _answer_roll_call():
    return [0], None
  deadline = time.monotonic() + _ROLL_CALL_S
  while True:
    present, posted = _posted(_PRESENT), _peer_error()
    if present is None:
      return [0], None
    if posted or len(present) == count or time.monotonic() > deadline:
      return sorted(set(range(count)) - set(present)), posted
    time.sleep(_POLL_S)


# ----------------------------------------------------------- messages --


def _error_message(error: BaseException) -> str:
  if isinstance(error, SystemExit) and isinstance(error.code, str):
    return error.code.removeprefix('error: ')
  if isinstance(error, HostsDisagree):
    return str(error)
  return f'{type(error).__name__}: {error}'


def _gone_message(gone: list[int], error: BaseException) -> str:
  several = len(gone) > 1
  return (f'process{"es" if several else ""} {", ".join(map(str, gone))} of '
          f'{jax.process_count()} {"are" if several else "is"} gone without '
          'a message (killed, out of memory, or a lost machine: see its own '
          f'log and the scheduler\'s); process {jax.process_index()} then '
          f'failed: {_error_message(error)[:200]}')


def _collective_failure(error: BaseException) -> bool:
  """A collective, barrier or key-value wait that broke: most often the
  consequence of a host failed or gone elsewhere."""
  return isinstance(error, (jax.errors.JaxRuntimeError, TimeoutError))


def _root_cause(error: BaseException) -> tuple[str, list[int]]:
  """(the message every host should print for `error`, the hosts gone).

  Another host's posted message wins over this host's broken collective; a
  message of this host's own is posted for the others.
  """
  posted = _peer_error()
  if posted is None and _collective_failure(error):
    gone, posted = _roll_call()
    if posted is None and gone:
      posted = dict(message=_gone_message(gone, error), gone=gone)
      _post_error(**posted)
  if posted is not None:
    print(f'(process {jax.process_index()} of {jax.process_count()}: '
          f'{_error_message(error)[:300]})', file=sys.stderr, flush=True)
    return posted['message'], posted['gone']
  if isinstance(error.__context__ if isinstance(error, SystemExit) else error,
                HostsDisagree):  # raised by every host alike (or its exit)
    message = _error_message(error)
  else:
    message = (f'process {jax.process_index()} of {jax.process_count()} '
               f'failed: {_error_message(error)}')
    if not isinstance(error, SystemExit):
      traceback.print_exc()
  _post_error(message)
  return message, []


# ------------------------------------------------------------ leaving --


def _leave(message: str, gone: list[int]) -> None:
  """Prints `message`, waits for the other hosts to read it, exits 1.

  Skips jax's exit handlers: their shutdown barrier would wait for the hosts
  that this error just ended.
  """
  print(f'error: {message}', file=sys.stderr, flush=True)
  stop_watcher()
  staying = [p for p in range(jax.process_count()) if p not in gone]
  try:
    client().wait_at_barrier('danil_jax/leaving', int(_LEAVE_WAIT_S * 1000),
                             staying)
  except Exception:  # pylint: disable=broad-except
    pass  # a host or the service already gone: nobody left to tell
  if jax.process_index() == 0:
    time.sleep(_CHIEF_LAST_S)
  os._exit(1)


@contextlib.contextmanager
def end_every_host():
  """An exception in the block ends every host with the root cause, status 1.

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
    if not _leaving.acquire(blocking=False):
      # The watcher is ending this process with another host's message.
      time.sleep(2 * _LEAVE_WAIT_S)
      os._exit(1)
    _leave(*_root_cause(e))


class _Watcher(threading.Thread):
  """Ends this process with another host's posted error; answers roll
  calls."""

  def __init__(self):
    super().__init__(name='danil_jax_error_watcher', daemon=True)
    self.stop = threading.Event()

  def run(self):
    me = jax.process_index()
    while not self.stop.wait(_POLL_S):
      present = _posted(_PRESENT)
      if present is None or (
          present and me not in present and not _answer_roll_call()):
        return  # the service is gone: this host's own client tells it
      posted = _peer_error()
      if posted and not self.stop.is_set() and _leaving.acquire(
          blocking=False):
        _leave(posted['message'], posted['gone'])


def start_watcher() -> None:
  global _watcher
  if jax.process_count() == 1 or _watcher is not None:
    return
  _watcher = _Watcher()
  _watcher.start()
  # atexit runs last-registered first: this stops the watcher before jax's
  # own handler shuts the distributed client down.
  atexit.register(stop_watcher)


def stop_watcher() -> None:
  if _watcher is not None:
    _watcher.stop.set()
    if _watcher is not threading.current_thread():
      _watcher.join(timeout=5)
