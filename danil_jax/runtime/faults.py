"""What a run does when it is preempted or a step goes non-finite.

Preemption: SLURM, Kubernetes and TPU maintenance send SIGTERM (an
interactive user SIGINT) some time before killing a job. `PreemptionGuard`
turns the first such signal into a stop: the training loop finishes the
current step, every process stops after the same step, writes its part of a
checkpoint there and leaves with `Preempted` (exit status `EXIT_PREEMPTED`).
A second signal ends the process at once: orbax writes every checkpoint into
a temporary directory and renames it when complete, so a save cut short never
becomes the latest checkpoint.

With several processes the step is JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`): JAX's own SIGTERM notifier
posts the notice to the coordination service, every process reports how far
it got, and all stop at the step after the furthest one, whichever process
got the signal and however far apart the signals came. SIGINT reaches that
notifier as a SIGTERM; a second SIGTERM is JAX's to ignore, so on several
processes only a second SIGINT (or SIGKILL) cuts the save short.

Non-finite steps: the train step (trainer/train_step.py) never applies an
update whose loss, gradient norm or result is NaN/Inf and says so in its
`nonfinite` metric;
`NonFiniteMonitor` reads that flag (one step late, so the host does not wait
for each step) and stops the run with `NonFiniteError` after
config.faults.max_nonfinite_in_a_row such steps in a row.

Exit statuses of `python -m danil_jax.main`: 0 done; 75 (EX_TEMPFAIL,
`EXIT_PREEMPTED`) preempted after writing a checkpoint, rerun the same
command to resume; 1 an error (non-finite steps, a refused config change,
a bad config value); -9/137 or -15/143 killed without a checkpoint (the
rerun resumes from the last one).
"""

import itertools
import os
import signal
import sys
import threading
from typing import Callable

from absl import logging
import jax
import numpy as np

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, retry
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint at `step`.

  A SystemExit, so every command calling `train.train_and_evaluate` ends
  with status EXIT_PREEMPTED unless it catches this.
  """

  def __init__(self, step: int, checkpoint_dir: str):
    self.step = step
    self.message = (
        f'Preempted: stopped after step {step} and saved a checkpoint in '
        f'{checkpoint_dir}. Rerun the same command (same --workdir) to resume '
        f'from step {step}.')
    super().__init__(EXIT_PREEMPTED)

  def __str__(self):
    return self.message


class NonFiniteError(FloatingPointError):
  """Too many steps in a row had a NaN/Inf loss, gradient norm or update."""


class PreemptionGuard:
  """Context manager: SIGTERM/SIGINT request a clean stop; a second one kills.

  `should_stop(step)` is True on every process after the same step once any
  process got a signal. With several processes every process must call it at
  the same points of the program (the training loop does, before each step
  and after each epoch): JAX's sync point counts the calls.
  """

  def __init__(self):
    self.received = None  # name of the first signal
    self._previous = {}
    self._jax_sync = False

  def __enter__(self):
    if jax.process_count() > 1 and not _jax_preemption_service():
      # No agreement on a step: one host saving alone would wait for ever.
      logging.warning('JAX\'s preemption service is off (jax_enable_'
                      'preemption_service): SIGTERM/SIGINT end the run '
                      'without a checkpoint')
      return self
    self._jax_sync = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      logging.warning('not in the main thread: SIGTERM/SIGINT will not save '
                      'a checkpoint before the run ends')
      return self
    # With several processes SIGTERM stays with JAX's notifier (installed by
    # jax.distributed.initialize), which starts the sync protocol.
    for signum in (signal.SIGINT,) if self._jax_sync else _SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      # Whatever is being written is in orbax's temporary directory, which
      # never becomes the latest checkpoint: dying here corrupts nothing.
      os.write(2, f'\n{name} again: exiting now; the run resumes from its '
               'last complete checkpoint.\n'.encode())
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = name
    os.write(2, f'\n{name} received: finishing this step and saving a '
             f'checkpoint, then exiting with status {EXIT_PREEMPTED}. Send it '
             'again to exit at once without saving.\n'.encode())
    if self._jax_sync:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier hears SIGTERM

  def should_stop(self, step: int) -> bool:
    """True once this step is where every process stops (see the class)."""
    if not self._jax_sync:
      return self.received is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    # A count of the calls in this process, not `step`: a notice that comes
    # before the loop (or between the runs of danil_jax.compare) is synced
    # at the count reached so far, which the next call then meets; a resumed
    # run's step would already be past it.
    stop = multihost_utils.reached_preemption_sync_point(next(_sync_calls))
    if stop:
      logging.warning('preemption sync point: stopping after step %d', step)
    return stop


# Every process makes the same sequence of should_stop calls.
_sync_calls = itertools.count(1)


def _jax_preemption_service() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.preemption_sync_manager is not None


class NonFiniteMonitor:
  """Counts the steps `train_step` refused as non-finite; stops per policy.

  `add(step, metrics)` after each step; `check(keep_last=1)` reads the flags
  of all steps but the newest (whose computation may still run), `check()`
  all of them (before a checkpoint, an evaluation, the end).
  """

  def __init__(self, max_in_a_row: int,
               last_checkpoint: Callable[[], str]):
    self.max_in_a_row = max_in_a_row
    self.last_checkpoint = last_checkpoint
    self.in_a_row = 0
    self.total = 0
    self._unchecked = []

  def add(self, step: int, metrics: dict) -> None:
    self._unchecked.append(
        (step, {k: metrics[k] for k in ('nonfinite', 'loss', 'grad_norm')}))

  def check(self, keep_last: int = 0) -> None:
    split = max(0, len(self._unchecked) - keep_last)
    ready, self._unchecked = self._unchecked[:split], self._unchecked[split:]
    for step, values in jax.device_get(ready):
      if not values['nonfinite']:
        self.in_a_row = 0
        continue
      self.in_a_row += 1
      self.total += 1
      what = _nonfinite_description(values)
      if self.in_a_row >= self.max_in_a_row:
        self._unchecked = []
        raise NonFiniteError(
            f'step {step}: {what}; stopped after {self.in_a_row} non-finite '
            f'step(s) in a row (config.faults.max_nonfinite_in_a_row='
            f'{self.max_in_a_row}). No non-finite update was applied or '
            f'saved; the last good checkpoint is {self.last_checkpoint()}. '
            'A rerun resumes from it and meets the same step again: lower '
            'config.optim.learning_rate (with --config.faults.'
            'allow_config_change=True), check the data, or raise '
            'config.faults.max_nonfinite_in_a_row to skip such steps.')
      logging.warning('step %d: %s; update skipped (%d in a row, %d in all; '
                      'the run stops at %d in a row)', step, what,
                      self.in_a_row, self.total, self.max_in_a_row)
      print(f'step {step}: {what}; update skipped', file=sys.stderr,
            flush=True)


def _nonfinite_description(values) -> str:
  if not np.isfinite(values['loss']):
    return f"the loss is {float(values['loss'])}"
  if not np.isfinite(values['grad_norm']):
    return f"the gradient norm is {float(values['grad_norm'])}"
  return ('the updated parameters or BatchNorm statistics are not finite '
          f"(loss {float(values['loss']):.4g}, gradient norm "
          f"{float(values['grad_norm']):.4g})")
