"""Command line entry point.

python -m danil_jax.main --config=configs/demo.py --workdir=/tmp/demo
  [--config.method=danil --config.danil.lam=1e-5 ...]
python -m danil_jax.main --config=configs/demo.py --print_config
  [--config.x=y ...]   # every key of the resolved config, then exit
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# Loads no JAX, so --help answers at once.
from danil_jax.runtime import cli

# Not marked required: --print_config needs none.
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics; '
                    'rerunning with the same one resumes.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config=configs/<name>.py is required')
  if flags.FLAGS.workdir is None:
    raise app.UsageError('--workdir is required')
  cli.setup(config)  # before anything touches the JAX backend
  from danil_jax.trainer import train
  logging.info('config:\n%s', config)
  with cli.errors_exit():
    train.train_and_evaluate(config, flags.FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
