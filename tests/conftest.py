import functools
import os
import shutil
import sys
import tempfile

import filelock
import pytest

# Tests import `configs` and `data_prep` from the checkout root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Most tests compile the same few demo-model steps, in this process, in the
# xdist workers and in the subprocess runs they start: one persistent XLA
# cache for the session (inherited through the environment) compiles each
# once. Set here, in the first conftest pytest loads, before any worker or
# subprocess starts and before JAX is imported.
#
# Every compile is kept, not only those over JAX's default second: the
# demo-sized steps compile in well under one, and there are hundreds of them.
# No size limit: with one, JAX locks the directory and lists every entry on
# each write, thousands of times a suite. A half-written entry that another
# process reads is an error JAX warns about, and it compiles instead.
# The process that made it (pytest, not its workers) removes it at the end.
_CACHE_MADE_HERE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_MADE_HERE = tempfile.mkdtemp(prefix='danil_jax_tests_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_MADE_HERE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def pytest_unconfigure(config):
  del config
  if _CACHE_MADE_HERE is not None:
    shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)


# The longest modules first (multi-process jobs, grids of runs, kill and
# rerun): pytest-xdist hands tests out in collection order, and one of them
# collected last keeps a worker busy for minutes while the other idles.
# Within a module the order stays as written.
LONGEST_FIRST = ('trainer/test_multihost_faults.py', 'trainer/test_multihost.py',
                 'evaluation/test_multihost_eval.py',
                 'experiments/test_paper.py', 'experiments/test_compare.py',
                 'runtime/test_faults.py', 'models/test_convert.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    module = item.nodeid.partition('::')[0]
    return next((i for i, name in enumerate(LONGEST_FIRST)
                 if module.endswith(name)), len(LONGEST_FIRST))

  items.sort(key=rank)

# ------------------------------------- what the multi-process tests share --
# The demo data set and the uninterrupted reference job (one process, two
# devices) are built once per suite: pytest-xdist's workers share them
# through a file lock in the directory above their own temporary roots.


def _shared(tmp_path_factory, name, make):
  """The directory `name`, made once by `make(path)` for every worker."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  path, done, failed = (root / name, root / f'{name}.done',
                        root / f'{name}.failed')
  with filelock.FileLock(str(root / f'{name}.lock')):
    if failed.exists():
      pytest.fail(f'{name} failed in another worker: see its report')
    if not done.exists():
      try:
        make(path)
      except BaseException:
        failed.touch()
        raise
      done.touch()
  return path


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
  """The demo data set, built once for every multi-process test."""
  from danil_jax import data_prep  # pylint: disable=g-import-not-at-top
  return _shared(tmp_path_factory, 'demo_data',
                 lambda path: data_prep.prepare('danil_demo',
                                                data_dir=str(path)))


@pytest.fixture(scope='session')
def shared_dir(tmp_path_factory):
  """`shared_dir(name, make)`: the directory `name`, made once by
  `make(path)` for the whole suite, every xdist worker included. Read it
  only: copy it to change it."""
  return functools.partial(_shared, tmp_path_factory)


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, demo_data_dir):  # pylint: disable=redefined-outer-name
  """The workdir of tests.trainer.test_multihost.command's job (12 steps),
  run uninterrupted by one process with two devices."""
  # pylint: disable-next=g-import-not-at-top
  from tests.trainer import test_multihost as jobs

  def run(path):
    path.mkdir()
    job = jobs.start(jobs.command(path / 'work', demo_data_dir),
                     path / 'reference.log', devices=2)
    assert jobs.finish([job]) == [0], jobs.read_log(
        path / 'reference.log')[-3000:]

  return _shared(tmp_path_factory, 'reference_run', run) / 'work'
