"""What the commands share: setup, errors as messages, joining a job.

`setup` and `errors_exit` are what every training command does around
`train.train_and_evaluate` (danil_jax.main, compare, paper) and the
commands on a trained run do around their work (evaluate, predict,
response_maps). `define_join_flags` is the switch with which those join a
multi-host job, as `main` does.

evaluate, predict and response_maps read their run's config from its
workdir; of the config flags they take only these, the keys of
configs/default.py under the same names: `--config.distributed=True`, and
where JAX cannot detect the cluster (SLURM, Open MPI, TPU pods and
Kubernetes it can) `--config.distributed_init.coordinator_address=HOST:PORT`,
`.num_processes=N`, `.process_id=i`. Without the switch a command is one
process on this host's devices, whatever the run was trained on.

JAX is imported lazily, so the commands' `--help` answers at once.
"""

import contextlib
import sys

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from configs import default


def setup(config) -> None:
  """Quiet logs unless --verbosity was given; join the hosts if configured.

  `config.distributed_init` gives the coordinator address, number of
  processes and process id where JAX cannot detect them (multihost.initialize).
  """
  if not flags.FLAGS['verbosity'].present:
    # Orbax and TFDS log every file they touch at INFO; keep the console to
    # the progress bars and results unless --verbosity asks for more.
    logging.set_verbosity(logging.WARNING)
  if config.distributed:
    # pylint: disable-next=g-import-not-at-top
    from danil_jax.runtime import multihost
    multihost.initialize(config.distributed_init)


@contextlib.contextmanager
def errors_exit():
  """Errors a user can act on end the command with their message alone:
  missing or bad data files, bad config values, a changed config in a
  workdir, damaged converted weights, a non-finite step, no readable
  checkpoint. Each message names the file, key or step and what to do; a
  traceback only hides it.

  In a multi-host run any error on one host ends every host, non-zero, with
  that host's message (host_failures.end_every_host). Preemption is not
  caught: faults.Preempted is a SystemExit with status faults.EXIT_PREEMPTED (75).
  """
  # pylint: disable=g-import-not-at-top
  from danil_jax.models import weights
  from danil_jax.runtime import checkpointing
  from danil_jax.runtime import config_checks
  from danil_jax.runtime import faults
  from danil_jax.runtime import host_failures
  from danil_jax.runtime import run_config
  from data_prep import common

  # pylint: enable=g-import-not-at-top
  with host_failures.end_every_host():
    try:
      yield
    except (common.ManualFilesMissing, common.DataError,
            config_checks.ConfigError, run_config.ConfigChanged,
            weights.ConversionError, faults.NonFiniteError,
            checkpointing.CheckpointError) as e:
      sys.exit(f'error: {e}')


def define_join_flags():
  """Defines --config.distributed and --config.distributed_init.*."""
  defaults = default.get_config()
  join = ml_collections.ConfigDict(dict(
      distributed=defaults.distributed,
      distributed_init=defaults.distributed_init))
  return config_flags.DEFINE_config_dict(
      'config', join, 'Joining the hosts of a pod, as for danil_jax.main: '
      '--config.distributed=True [--config.distributed_init.*].',
      lock_config=True)
