"""What a run does when it is preempted or a step goes non-finite.

Preemption: SLURM, Kubernetes and TPU maintenance send SIGTERM (an
interactive user SIGINT) some time before killing a job. `PreemptionGuard`
turns the first such signal into a flag; the training loop finishes the
current step, all processes agree on the step to stop at, write a checkpoint
there and leave with `Preempted` (exit status `EXIT_PREEMPTED`). A second
signal ends the process at once: orbax writes every checkpoint into a
temporary directory and renames it when complete, so a save cut short never
becomes the latest checkpoint.

Non-finite steps: `steps.train_step` never applies an update whose loss,
gradient norm or result is NaN/Inf and says so in its `nonfinite` metric;
`NonFiniteMonitor` reads that flag (one step late, so the host does not wait
for each step) and stops the run with `NonFiniteError` after
config.faults.max_nonfinite_in_a_row such steps in a row.

Exit statuses of `python -m danil_jax.main`: 0 done; 75 (EX_TEMPFAIL,
`EXIT_PREEMPTED`) preempted after writing a checkpoint, rerun the same
command to resume; 1 an error (non-finite steps, a refused config change,
a bad config value); -9/137 or -15/143 killed without a checkpoint (the
rerun resumes from the last one).
"""

import os
import signal
import sys
import threading
from typing import Callable

import jax
import numpy as np
from absl import logging

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

  `should_stop(step)` is True on every process at the same step once any
  process got a signal. With several processes it all-gathers the local
  flags every `sync_every_steps` steps (and where `force_sync`), so every
  process must call it at the same steps.
  """

  def __init__(self, sync_every_steps: int = 1):
    self.sync_every_steps = max(1, int(sync_every_steps))
    self.received = None  # name of the first signal
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.warning('not in the main thread: SIGTERM/SIGINT will not save '
                      'a checkpoint before the run ends')
      return self
    for signum in _SIGNALS:
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

  def should_stop(self, step: int, *, force_sync: bool = False) -> bool:
    local = self.received is not None
    if jax.process_count() == 1:
      return local
    if not force_sync and step % self.sync_every_steps:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(local))
    return bool(np.any(flags))


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
