"""A job's faults on several processes: preemption, NaN steps, topology.

Each job is the command a user runs on every host (`danil_jax.main`, gloo on
CPU, a loopback coordinator) started through `_DRIVER`, which only watches
and slows it from the host side: it prints each finished step, may sleep
after it (so that signals land mid-run), and may poison one process's share
of a batch. The compiled steps are those of the plain command, so every
result is compared with one uninterrupted process with two devices.
"""

import re
import shutil
import signal
import sys
import time

import portpicker
import pytest

from tests.trainer.test_multihost import assert_same_run
from tests.trainer.test_multihost import checkpoint_steps
from tests.trainer.test_multihost import command
from tests.trainer.test_multihost import finish
from tests.trainer.test_multihost import JOB_TIMEOUT_S
from tests.trainer.test_multihost import read_log
from tests.trainer.test_multihost import start
from tests.trainer.test_multihost import STEPS

_DRIVER = r'''
import os, signal, sys, time
import numpy as np
from absl import app
from danil_jax.runtime import faults
from danil_jax import main
from danil_jax.runtime import multihost
from danil_jax.trainer import train

delay = float(sys.argv.pop(1))  # seconds of sleep after each step
poison = sys.argv.pop(1)  # 'PROCESS:STEP,STEP' or ''
before = sys.argv.pop(1)  # 'PROCESS:SIGNAL' or ''
crash = sys.argv.pop(1)  # 'PROCESS:STEP' or ''
original_add = faults.NonFiniteMonitor.add

def add(self, step, metrics):
  import jax
  original_add(self, step, metrics)
  print(f'finished step {step}', file=sys.stderr, flush=True)
  if crash and crash == f'{jax.process_index()}:{step}':
    raise RuntimeError(f'a bug after step {step}')
  time.sleep(delay)

faults.NonFiniteMonitor.add = add
if before:
  # A signal to one process before any step: every process then waits, so
  # the notice reaches them all before their first sync-point check.
  signalled, name = before.split(':')
  original_train = train._train

  def train_steps(*args):
    import jax
    if jax.process_index() == int(signalled):
      os.kill(os.getpid(), getattr(signal, name))
    time.sleep(3)
    return original_train(*args)

  train._train = train_steps
if poison:
  process, steps = poison.split(':')
  steps = {int(s) for s in steps.split(',')}
  original_global_batch, calls = multihost.global_batch, []

  def global_batch(local_batch, mesh):
    import jax
    calls.append(1)
    if jax.process_index() == int(process) and len(calls) in steps:
      local_batch = dict(local_batch,
                         image=np.full_like(local_batch['image'], np.nan))
    return original_global_batch(local_batch, mesh)

  multihost.global_batch = global_batch

if __name__ == '__main__':
  app.run(main.main)
'''


def start_job(tmp_path, workdir, data_dir, name, *overrides, processes=2,
              devices=1, step_delay_s=0.0, poison='', before='', crash=''):
  """The processes of a job, each logging to tmp_path/<name>_<i>.log."""
  driver = tmp_path / 'driver.py'
  driver.write_text(_DRIVER)
  argv = [sys.executable, str(driver), str(step_delay_s), poison, before,
          crash, *command(workdir, data_dir, *overrides)[3:]]
  port = portpicker.pick_unused_port()
  return [start(argv, tmp_path / f'{name}_{p}.log', devices=devices,
                process_id=p, num_processes=processes, port=port)
          for p in range(processes)]


def logs(tmp_path, name, processes=2):
  return [read_log(tmp_path / f'{name}_{p}.log') for p in range(processes)]


def finished_steps(log):
  # Not line by line: process 0's progress bar shares the lines.
  return [int(s) for s in re.findall(r'finished step (\d+)\n', log)]


def wait_for_step(process_log, step, processes):
  """Until the log shows `step` finished; fails if the job ended first."""
  deadline = time.time() + JOB_TIMEOUT_S
  while time.time() < deadline:
    if any(p.poll() is not None for p in processes):
      break
    if max(finished_steps(read_log(process_log)), default=0) >= step:
      return
    time.sleep(0.1)
  for p in processes:
    p.kill()
  pytest.fail(f'no step {step} in {process_log}:\n'
              + read_log(process_log)[-3000:])


def stop_step(job_logs):
  """The step each process says it stopped after (chief, then the rest)."""
  chief = job_logs[0].split('Preempted: stopped after step ')[1].split()[0]
  others = [log.split('preemption sync point: stopping after step ')[1]
            .split()[0] for log in job_logs]
  return [int(chief)] + [int(s) for s in others]


# Seconds between steps: a signal lands mid-run, some steps before the end.
SLOW = 0.75


@pytest.fixture
def data_dir(demo_data_dir):
  return demo_data_dir


@pytest.fixture
def reference(reference_run):
  """The uninterrupted run: one process with two devices."""
  return reference_run


@pytest.fixture(scope='module')
def preempted(tmp_path_factory, demo_data_dir):
  """A two-process job stopped by SIGTERM to process 0 and, two seconds
  later, to process 1: (its workdir, the step it stopped after)."""
  data_dir = demo_data_dir
  tmp = tmp_path_factory.mktemp('preempted')
  work = tmp / 'work'
  job = start_job(tmp, work, data_dir, 'term', step_delay_s=SLOW)
  wait_for_step(tmp / 'term_0.log', 2, job)
  job[0].send_signal(signal.SIGTERM)
  time.sleep(2)
  if job[1].poll() is None:
    job[1].send_signal(signal.SIGTERM)
  codes = finish(job)
  job_logs = logs(tmp, 'term')
  assert codes == [75, 75], [log[-3000:] for log in job_logs]
  steps = stop_step(job_logs)
  assert len(set(steps)) == 1, steps
  step = steps[0]
  # Each process took every step up to the agreed one, and no further.
  for log in job_logs:
    assert finished_steps(log) == list(range(1, step + 1))
    assert 'error: process' not in log
  assert 2 <= step < STEPS and checkpoint_steps(work)[-1] == step
  return work, step


def test_signals_apart_and_to_one_host_stop_all_at_one_step_with_75(
    tmp_path, data_dir, reference, preempted):
  work, first_stop = preempted
  work = shutil.copytree(work, tmp_path / 'work')
  # SIGINT (Ctrl-C) to process 1 alone, before the resumed run's first
  # step: the notice comes before any sync-point check.
  job = start_job(tmp_path, work, data_dir, 'int', before='1:SIGINT')
  codes = finish(job)
  job_logs = logs(tmp_path, 'int')
  assert codes == [75, 75], [log[-3000:] for log in job_logs]
  assert f'Resuming from step {first_stop}' in job_logs[0]
  assert 'SIGINT received' in job_logs[1]
  assert stop_step(job_logs) == [first_stop] * 3
  for log in job_logs:
    assert not finished_steps(log)
  assert checkpoint_steps(work)[-1] == first_stop
  # Rerun to the end: the uninterrupted run's parameters and metrics.
  job = start_job(tmp_path, work, data_dir, 'rest')
  assert finish(job) == [0, 0], logs(tmp_path, 'rest')[0][-3000:]
  assert_same_run(work, reference)


def test_a_two_process_checkpoint_resumes_on_one_and_on_four_processes(
    tmp_path, data_dir, reference, preempted):
  work, step = preempted
  # One process with the same two devices: the same sums, the same run.
  one = shutil.copytree(work, tmp_path / 'one')
  job = start_job(tmp_path, one, data_dir, 'one', processes=1, devices=2)
  assert finish(job) == [0], logs(tmp_path, 'one', 1)[0][-3000:]
  assert f'Resuming from step {step}' in logs(tmp_path, 'one', 1)[0]
  assert_same_run(one, reference)
  # Four processes with two devices each: 8 devices sum each batch in
  # another order than 2, and the batch reading (the default, Ld weighed 1/D
  # over the batch) amplifies that early in training. Measured after 12
  # steps, resumed from step 2 / 3: 1.1e-3 / 4.8e-3 at most in a parameter
  # or statistic, the test loss 4e-4 / 1.8e-2 apart.
  # The test split (800) splits 8 ways in batches of 200; not in 100.
  eight = shutil.copytree(work, tmp_path / 'eight')
  job = start_job(tmp_path, eight, data_dir, 'eight',
                  '--config.input.eval_batch_size=200',
                  '--config.faults.allow_config_change=True', processes=4,
                  devices=2)
  codes = finish(job)
  job_logs = logs(tmp_path, 'eight', 4)
  assert codes == [0] * 4, job_logs[0][-3000:]
  assert f'Resuming from step {step}' in job_logs[0]
  assert_same_run(eight, reference, rtol=5e-2, atol=2e-2,
                  same_predictions=False)


def test_a_nan_on_one_host_is_skipped_then_stops_every_host_at_one_step(
    tmp_path, data_dir):
  work = tmp_path / 'work'
  # Only process 1's share of batches 5, 9 and 10 is NaN; the loss is the
  # mean over the global batch, so every process must see it.
  job = start_job(tmp_path, work, data_dir, 'nan',
                  '--config.faults.max_nonfinite_in_a_row=2',
                  poison='1:5,9,10')
  codes = finish(job)
  job_logs = logs(tmp_path, 'nan')
  assert codes == [1, 1], [log[-3000:] for log in job_logs]
  for log in job_logs:
    assert 'step 5: the loss is nan; update skipped' in log, log[-3000:]
    assert 'step 9: the loss is nan; update skipped' in log
    # Whichever process ends first, the other ends with its message.
    assert re.search(r'error: process [01] of 2 failed: step 10: the loss is '
                     r'nan; stopped after 2 non-finite step\(s\) in a row', log)
    assert max(finished_steps(log)) <= 11  # read one step late
  assert checkpoint_steps(work) == [4, 8]


def test_a_host_killed_ends_the_others_within_seconds(tmp_path, data_dir):
  job = start_job(tmp_path, tmp_path / 'work', data_dir, 'killed',
                  step_delay_s=SLOW)
  wait_for_step(tmp_path / 'killed_1.log', 2, job)
  job[1].send_signal(signal.SIGKILL)
  started = time.time()
  codes = finish(job, timeout=120)
  survivor = logs(tmp_path, 'killed')[0]
  assert codes == [1, -9], survivor[-3000:]
  # Not a collective's timeout (30 min), a hang or JAX's heartbeat (100 s):
  # the survivor's roll call names the host that is gone.
  assert time.time() - started < 60
  assert ('error: process 1 of 2 is gone without a message (killed, out of '
          'memory, or a lost machine') in survivor, survivor[-3000:]


def test_a_crash_on_one_host_mid_run_ends_every_host_with_its_message(
    tmp_path, data_dir):
  # Process 1 raises after step 3 while process 0 goes on into step 4's
  # collectives: process 0 must print process 1's error, not gloo's.
  job = start_job(tmp_path, tmp_path / 'work', data_dir, 'crash',
                  crash='1:3')
  codes = finish(job, timeout=120)
  job_logs = logs(tmp_path, 'crash')
  assert codes == [1, 1], [log[-3000:] for log in job_logs]
  for log in job_logs:
    assert ('error: process 1 of 2 failed: RuntimeError: a bug after step 3'
            in log), log[-3000:]
    assert 'error: process 0' not in log
