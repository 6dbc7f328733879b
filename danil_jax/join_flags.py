"""The switch with which the commands join a multi-host job, as `main` does.

evaluate, predict and response_maps read their run's config from its
workdir; of the config flags they take only these, the keys of
configs/default.py under the same names: `--config.distributed=True`, and
where JAX cannot detect the cluster (SLURM, Open MPI, TPU pods and
Kubernetes it can) `--config.distributed_init.coordinator_address=HOST:PORT`,
`.num_processes=N`, `.process_id=i`. Without the switch a command is one
process on this host's devices, whatever the run was trained on.
"""

import ml_collections
from ml_collections import config_flags

from configs import default


def define():
  """Defines --config.distributed and --config.distributed_init.*."""
  defaults = default.get_config()
  join = ml_collections.ConfigDict(dict(
      distributed=defaults.distributed,
      distributed_init=defaults.distributed_init))
  return config_flags.DEFINE_config_dict(
      'config', join, 'Joining the hosts of a pod, as for danil_jax.main: '
      '--config.distributed=True [--config.distributed_init.*].',
      lock_config=True)
