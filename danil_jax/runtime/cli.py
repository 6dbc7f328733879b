"""What every training command does around `train.train_and_evaluate`.

Shared by `danil_jax.main` and `danil_jax.compare`; imports JAX lazily so
their `--help` answers at once.
"""

import contextlib
import sys

from absl import flags
from absl import logging


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
    from danil_jax import multihost  # pylint: disable=g-import-not-at-top
    multihost.initialize(config.distributed_init)


@contextlib.contextmanager
def errors_exit():
  """Errors a user can act on end the command with their message alone:
  missing or bad data files, bad config values, a changed config in a
  workdir, damaged converted weights, a non-finite step, no readable
  checkpoint. Each message names the file, key or step and what to do; a
  traceback only hides it.

  In a multi-host run any error on one host ends every host, non-zero, with
  that host's message (multihost.end_every_host). Preemption is not caught:
  faults.Preempted is a SystemExit with status faults.EXIT_PREEMPTED (75).
  """
  # pylint: disable=g-import-not-at-top
  from data_prep import common
  from danil_jax import checkpointing, config_checks, faults, multihost
  from danil_jax import run_config, weights
  # pylint: enable=g-import-not-at-top
  with multihost.end_every_host():
    try:
      yield
    except (common.ManualFilesMissing, common.DataError,
            config_checks.ConfigError, run_config.ConfigChanged,
            weights.ConversionError, faults.NonFiniteError,
            checkpointing.CheckpointError) as e:
      sys.exit(f'error: {e}')
