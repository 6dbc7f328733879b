"""Two processes joined by jax.distributed equal one process with two devices.

Each job is `python -m danil_jax.main` in subprocesses on a loopback
coordinator (gloo collectives, one CPU device per process): the command a
user runs on every host, with the explicit join settings of plain machines.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest

from danil_jax.configs import default
from danil_jax.runtime import multihost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(

    os.path.abspath(__file__))))
STEPS = 12
# Bounds every wait: a hung job fails the test instead of stalling the suite.
JOB_TIMEOUT_S = 600


def command(workdir, data_dir, *overrides):
  return [sys.executable, '-m', 'danil_jax.main', '--config=configs/demo.py',
          f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
          f'--config.max_steps={STEPS}', '--config.checkpoint_every_steps=4',
          '--config.log_every_steps=100', '--config.input.global_batch_size=16',
          *overrides]


def start(argv, log_path, *, devices=1, process_id=None, num_processes=2,
          port=None):
  """One process of a job; with `process_id`, one of `num_processes`."""
  if process_id is not None:
    argv = argv + [
        '--config.distributed=True',
        f'--config.distributed_init.coordinator_address=localhost:{port}',
        f'--config.distributed_init.num_processes={num_processes}',
        f'--config.distributed_init.process_id={process_id}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  # The job must pick gloo itself (multihost.initialize).
  env.pop('JAX_CPU_COLLECTIVES_IMPLEMENTATION', None)
  return subprocess.Popen(argv, cwd=REPO, env=env,
                          stdout=open(log_path, 'w'), stderr=subprocess.STDOUT)


def start_two(argv, tmp_path, name, argv_1=None):
  port = portpicker.pick_unused_port()
  return [start(argv if p == 0 or argv_1 is None else argv_1,
                tmp_path / f'{name}_{p}.log', process_id=p, port=port)
          for p in range(2)]


def finish(processes, timeout=JOB_TIMEOUT_S):
  codes = []
  for process in processes:
    try:
      codes.append(process.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
  return codes


def read_log(path):
  with open(path) as f:
    return f.read()


def checkpoint_steps(workdir, directory='checkpoints'):
  directory = workdir / directory
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit()) if directory.exists() else []


def final_state(workdir, directory='checkpoints'):
  """The last checkpoint's arrays as numpy, read on this one device."""
  path = (workdir / directory / str(checkpoint_steps(workdir, directory)[-1])
          / 'state')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata.tree
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        metadata)
    state = checkpointer.restore(path, target)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_leaves_with_path(
              {'params': state['params'],
               'batch_stats': state['batch_stats'], 'step': state['step']})}


def assert_same_run(workdir, reference, *, rtol=1e-5, atol=1e-6,
                    same_predictions=True):
  got, want = final_state(workdir), final_state(reference)
  assert got.keys() == want.keys() and len(want) > 20
  assert int(got["['step']"]) == STEPS
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol,
                               err_msg=name)
  metrics = [json.load(open(w / 'final_metrics.json'))
             for w in (workdir, reference)]
  if same_predictions:
    assert metrics[0]['confusion_matrix'] == metrics[1]['confusion_matrix']
  np.testing.assert_allclose(metrics[0]['loss'], metrics[1]['loss'], rtol=rtol)


def test_two_processes_equal_one_process_with_two_devices(tmp_path,
                                                          reference_run):
  data_dir = tmp_path / 'data'  # fresh: process 0 builds, process 1 waits
  work = tmp_path / 'two_processes'
  # A first two-process job, killed once it has written a checkpoint.
  first = start_two(command(work, data_dir, '--config.max_steps=400'),
                    tmp_path, 'first')
  deadline = time.time() + JOB_TIMEOUT_S
  while (not checkpoint_steps(work) and time.time() < deadline
         and all(p.poll() is None for p in first)):
    time.sleep(0.2)
  for p in first:
    p.send_signal(signal.SIGKILL)
  finish(first)
  logs = [read_log(tmp_path / f'first_{p}.log') for p in range(2)]
  assert checkpoint_steps(work), logs[0][-3000:] + logs[1][-3000:]
  assert 'downloaded and prepared' in logs[0]
  assert 'downloaded and prepared' not in logs[1]  # one build, two readers
  resumed_step = checkpoint_steps(work)[-1]
  assert resumed_step < STEPS
  on_one = tmp_path / 'resumed_on_one_process'
  shutil.copytree(work, on_one)

  # The uninterrupted reference: one process, two devices (the same job on
  # the suite's shared copy of the data).
  reference = reference_run

  # Rerunning both processes resumes and ends as the uninterrupted run.
  again = start_two(command(work, data_dir), tmp_path, 'again')
  assert finish(again) == [0, 0], read_log(tmp_path / 'again_0.log')[-3000:]
  assert f'Resuming from step {resumed_step}' in read_log(
      tmp_path / 'again_0.log')
  assert_same_run(work, reference)

  # The two-process checkpoint resumed by one process with one device.
  single = start(command(on_one, data_dir), tmp_path / 'single.log')
  assert finish([single]) == [0], read_log(tmp_path / 'single.log')[-3000:]
  assert f'Resuming from step {resumed_step}' in read_log(
      tmp_path / 'single.log')
  # One device sums the batch in another order than two: close, not equal.
  # With the per-image reading 2e-5 apart; the batch reading (the default)
  # weighs Ld 1/D over the whole batch and amplifies that rounding to ~2e-3
  # in a few BatchNorm statistics after 12 steps.
  assert_same_run(on_one, reference, rtol=1e-2, atol=5e-3,
                  same_predictions=False)


def test_an_error_on_one_host_ends_both(tmp_path, demo_data_dir):
  # Process 1 is given a data dir that lacks the data set process 0 has, as
  # when a user forgets the shared disk.
  elsewhere = tmp_path / 'not_shared'
  elsewhere.mkdir()
  processes = start_two(command(tmp_path / 'work', demo_data_dir), tmp_path,
                        'error', argv_1=command(tmp_path / 'work', elsewhere))
  # Whichever ends first, the other follows within seconds: far sooner than
  # the coordination service's heartbeat (100 s) or a collective's timeout.
  deadline = time.time() + JOB_TIMEOUT_S
  while all(p.poll() is None for p in processes) and time.time() < deadline:
    time.sleep(0.2)
  codes = finish(processes, timeout=30)
  logs = [read_log(tmp_path / f'error_{p}.log') for p in range(2)]
  assert codes == [1, 1], logs
  message = ('error: process 1 of 2 failed: dataset \'danil_demo\' is not in '
             'data_dir')
  for log in logs:
    assert message in log, log[-3000:]


def test_hosts_started_with_other_flags_stop_together_naming_the_keys(
    tmp_path, demo_data_dir):
  """Decided together, before any data or collective: every host prints the
  keys that differ, with each host's value."""
  argv = command(tmp_path / 'work', demo_data_dir)
  processes = start_two(argv, tmp_path, 'flags', argv_1=argv + [
      '--config.optim.learning_rate=0.5', '--config.seed=7',
      '--config.input.num_workers=1'])  # a key each host may set its own way
  codes = finish(processes, timeout=120)
  logs = [read_log(tmp_path / f'flags_{p}.log') for p in range(2)]
  assert codes == [1, 1], logs
  for log in logs:
    assert ("error: the config (the keys that differ) differs between the "
            "hosts: process 0 has {'optim.learning_rate': 0.05, 'seed': 0}, "
            "process 1 has {'optim.learning_rate': 0.5, 'seed': 7}") in log, (
                log[-3000:])
    assert 'failed' not in log and 'Traceback' not in log
  assert not (tmp_path / 'work' / 'config.json').exists()


REPLICATE = '''
import sys
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jax.experimental import multihost_utils
from danil_jax.runtime import multihost
multihost.initialize(ml_collections.ConfigDict(dict(
    coordinator_address=sys.argv[1], num_processes=2,
    process_id=int(sys.argv[2]))))
mesh = multihost.make_mesh()
assert mesh.size == 2 and jax.process_count() == 2

def gather_check(*args, **kwargs):  # device_put's all-host comparison
  raise AssertionError('compared the copies of every host')

multihost_utils.assert_equal = gather_check
tree = {'kernel': jnp.arange(6.0).reshape(2, 3), 'stats': np.ones(4),
        'step': 0}
out = multihost.replicate(tree, mesh)
for leaf in jax.tree.leaves(out):
  assert leaf.sharding.is_fully_replicated and not leaf.is_fully_addressable
np.testing.assert_array_equal(out['kernel'].addressable_data(0),
                              np.arange(6.0).reshape(2, 3))
assert out['stats'].dtype == np.float32 and out['step'].dtype == np.int32
try:  # the check replicate avoids is the one device_put makes
  jax.device_put(tree['stats'], multihost.replicated(mesh))
  sys.exit('device_put did not compare the hosts: the patch is stale')
except AssertionError:
  print('replicated without comparing hosts')
'''


def test_replicating_host_local_values_compares_no_hosts(tmp_path):
  address = f'localhost:{portpicker.pick_unused_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  processes = [subprocess.Popen(
      [sys.executable, '-c', REPLICATE, address, str(p)], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for p in range(2)]
  outputs = []
  for process in processes:
    try:
      outputs.append(process.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
    assert 'replicated without comparing hosts' in output


@pytest.fixture
def recorded_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: calls.append(kwargs))
  # Read only when a backend starts: changing them here touches nothing live.
  previous = {name: getattr(jax.config, name) for name in
              ('jax_cpu_collectives_implementation', 'jax_platforms')}
  jax.config.update('jax_cpu_collectives_implementation', None)
  yield calls
  for name, value in previous.items():
    jax.config.update(name, value)


def test_explicit_settings_reach_jax_and_cpu_jobs_get_gloo(
    recorded_initialize):
  jax.config.update('jax_platforms', 'cpu')
  settings = default.get_config().distributed_init
  settings.update(coordinator_address='10.0.0.1:8476', num_processes=4,
                  process_id=0)  # 0 is a setting too
  multihost.initialize(settings)
  assert recorded_initialize == [dict(coordinator_address='10.0.0.1:8476',
                                      num_processes=4, process_id=0)]
  assert jax.config.jax_cpu_collectives_implementation == 'gloo'


def test_default_settings_leave_the_cluster_to_auto_detection(
    recorded_initialize):
  jax.config.update('jax_platforms', 'cuda,cpu')
  multihost.initialize(default.get_config().distributed_init)
  assert recorded_initialize == [{}]
  assert jax.config.jax_cpu_collectives_implementation is None


def test_bucket_workdirs_are_not_taken_for_local_paths(tmp_path, monkeypatch):
  # Pods have no shared disk: os.path.abspath made 'gs://b/run' '$PWD/gs:/b/run'.
  # pylint: disable-next=g-import-not-at-top
  from danil_jax.runtime import checkpointing
  from danil_jax.runtime import run_log
  monkeypatch.chdir(tmp_path)
  assert os.fspath(checkpointing.absolute_path('gs://b/run')) == 'gs://b/run'
  assert os.fspath(run_log.MetricsLog('gs://b/run').path) == (
      'gs://b/run/metrics.jsonl')
  assert os.fspath(checkpointing.absolute_path('run')) == str(tmp_path / 'run')


def test_a_folder_data_set_is_built_by_process_0_alone(tmp_path):
  """configs/folder.py on two hosts: process 0 scans and builds, process 1
  waits, then both open the same build and train."""
  from danil_jax.data_prep.own import fixtures  # pylint: disable=g-import-not-at-top
  fixtures.make_folder(str(tmp_path / 'images'), patients=6, per_patient=2)
  argv = [sys.executable, '-m', 'danil_jax.main', '--config=configs/folder.py',
          f'--workdir={tmp_path / "work"}',
          f'--config.dataset.manual_dir={tmp_path / "images"}',
          f'--config.dataset.data_dir={tmp_path / "data"}',
          '--config.dataset.own.group_regex=(P\\d+)_',
          '--config.dataset.image_size=16', '--config.model.name=small_resnet',
          '--config.method=base', '--config.max_steps=2',
          '--config.input.global_batch_size=4',
          '--config.input.eval_batch_size=4', '--config.input.num_workers=0']
  assert finish(start_two(argv, tmp_path, 'folder')) == [0, 0]
  logs = [read_log(tmp_path / f'folder_{p}.log') for p in range(2)]
  assert 'building' in logs[0] and 'building' not in logs[1]
  assert (tmp_path / 'work' / 'final_metrics.json').exists()
  assert json.loads((tmp_path / 'work' / 'data.json').read_text())[
      'class_names'] == ['benign', 'malignant']
