"""What the commands share: the command line, setup, errors as messages,
joining a job.

`run` is every command's `app.run`: the rules of its command line, in one
place (`--help` exits 0; a flag or config error ends with a few lines on
stderr and exit status 2; `--print_config`). `setup` and `errors_exit` are
what every training command does around
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
import difflib
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
# The parser of DEFINE_config_file's flags (not exported by config_flags).
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from danil_jax import configs
from danil_jax.configs import default

HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull',
              '--helpxml')
SHIPPED_CONFIGS = os.path.dirname(default.__file__)
USAGE_ERROR = 2  # exit status of a command line that cannot run, as argparse
# Warnings the libraries log on every command that tell the user nothing:
# (the module that logs it, the start of its message).
NOISE = (
    # orbax, on every checkpoint opened only to read it.
    ('checkpoint_manager.py', 'CheckpointManagerOptions.read_only=True'),
    ('checkpoint_manager.py', 'Given directory is read only'),
    # TFDS decodes with PIL instead: the same pixels.
    ('image_feature.py', 'OpenCV is not installed'),
)


def run(main) -> None:
  """`app.run(main)` with the command-line rules every command shares.

  absl's own handling makes a screenful of each slip: `--help` exits 1, a
  missing config file and a misspelt config key are tracebacks (config_flags
  defers the first to the config's first use and lets the KeyError of the
  second escape), a UsageError reprints the module docstring. Here each
  ends with two lines on stderr and status 2, naming the flag, the
  nearest valid key, and `--print_config`, which prints every key of the
  resolved config with its value and exits (commands with a config file).
  The libraries' warnings that tell the user nothing (NOISE) are dropped.
  """
  if _config_file_flag() is not None and 'print_config' not in flags.FLAGS:
    flags.DEFINE_bool('print_config', False, 'Print every key of the '
                      'resolved config (file and overrides) with its value, '
                      'and exit.')

  def main_with_short_usage_errors(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      _usage_error(str(e))

  app.run(main_with_short_usage_errors, flags_parser=_parse_flags)


def _drop_noise(record: std_logging.LogRecord) -> bool:
  """False for a NOISE record, unless --verbosity asks for every log."""
  if 'verbosity' in flags.FLAGS and flags.FLAGS['verbosity'].present:
    return True
  message = str(record.msg)
  return not any(record.pathname.endswith(module) and message.startswith(
      start) for module, start in NOISE)


# On import, not in `run`: grain's worker processes import the command's
# module again (not as __main__) and decode images there, where TFDS warns
# about OpenCV once more per worker.
logging.get_absl_logger().addFilter(_drop_noise)


def format_config(config: ml_collections.ConfigDict) -> str:
  """One `key = value` line per leaf, dotted keys as --config.KEY takes."""
  return '\n'.join(f'{key} = {value!r}' for key, value in _leaves(config))


def shipped_config(path: str) -> str:
  """The file a --config value names: `path` where it exists, else the
  package's config for `NAME`, `NAME.py` or `configs/NAME.py`, so that the
  documented `--config=configs/crc_msi.py` works from any directory."""
  file, colon, arg = path.partition(':')  # config_flags' `file.py:arg`
  name = file.removesuffix('.py')
  if os.path.exists(file) or os.path.dirname(name) not in ('', 'configs'):
    return path
  shipped = os.path.join(SHIPPED_CONFIGS, os.path.basename(name) + '.py')
  return shipped + colon + arg if os.path.isfile(shipped) else path


def _shipped_config_names() -> str:
  return ', '.join(sorted(n[:-3] for n in os.listdir(SHIPPED_CONFIGS)
                          if n.endswith('.py') and n != '__init__.py'))


def _with_shipped_configs(argv: list[str]) -> list[str]:
  """argv with each --config value resolved by `shipped_config`, written
  `--config=VALUE` (the form the error messages below read)."""
  out, rest = argv[:1], iter(argv[1:])
  for arg in rest:
    if arg in ('--config', '-config'):
      arg = f'{arg}={next(rest, "")}'
    prefix = next((p for p in ('--config=', '-config=') if
                   arg.startswith(p)), None)
    out.append(prefix + shipped_config(arg[len(prefix):]) if prefix else arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  argv = _with_shipped_configs(argv)
  wants_help = any(a.split('=')[0] in HELP_FLAGS for a in argv[1:])
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    if wants_help:  # absl printed the help and exits 1
      sys.exit(0)
    raise
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    _usage_error(_misspelt_key(argv, _config_of(argv)) or _one_line(e))
  flag = _config_file_flag()
  if flag is not None and flag.value is not None:
    try:
      flag.value.keys()  # a file that failed to load raises here
    except OSError as e:
      # Its last line names the cause ([Errno 2] No such file ..., or the
      # exception get_config raised).
      cause = str(e).strip().splitlines()[-1].strip()
      if not os.path.exists(flag.config_filename.partition(':')[0]):
        cause += f' (shipped configs: {_shipped_config_names()})'
      _usage_error(f'--config={flag.config_filename}: {cause}')
  if 'print_config' in flags.FLAGS and flags.FLAGS.print_config:
    if flag is None or flag.value is None:
      _usage_error('--print_config needs --config=FILE')
    try:
      print(format_config(flag.value), flush=True)
    except BrokenPipeError:  # `--print_config | head`: the reader has enough
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  return rest


def _config_file_flag():
  """The command's --config flag if it names a config file, else None."""
  if 'config' not in flags.FLAGS:
    return None
  flag = flags.FLAGS['config']
  return flag if isinstance(flag.parser, ConfigFileFlagParser) else None


def _misspelt_key(argv: list[str], config) -> str | None:
  """'--config.KEY: no such key; the nearest is ...' for the first override
  of a key `config` lacks; None when every key exists (or config is None)."""
  if config is None:
    return None
  keys = [key for key, _ in _leaves(config)]
  for arg in argv[1:]:
    name = arg.lstrip('-').split('=')[0]
    if not name.startswith('config.'):
      continue
    key = name[len('config.'):]
    if key in keys or any(k.startswith(key + '.') for k in keys):
      continue
    if key in default.REMOVED_KEYS:
      return f'--config.{key} no longer exists: {default.REMOVED_KEYS[key]}'
    section = key.rpartition('.')[0]
    candidates = [k for k in keys if k.startswith(section + '.')] or keys
    nearest = max(candidates, key=lambda k: _likeness(key, k))
    hint = ('--print_config lists them' if _config_file_flag() is not None
            else '--helpfull lists them')
    return (f'--config.{key}: no such key; the nearest is --config.{nearest}'
            f' ({hint})')
  return None


def _likeness(key: str, candidate: str) -> tuple:
  """Orders candidates for a misspelt key: an abbreviation of the last part
  by initials (lr: learning_rate), then its letters in order within it
  (distributd: distributed), then difflib's ratio of the whole keys."""
  leaf, other = key.rpartition('.')[2], candidate.rpartition('.')[2]
  initials = ''.join(word[:1] for word in other.split('_'))
  letters = iter(other)
  in_order = all(c in letters for c in leaf)
  return (leaf == initials, in_order,
          difflib.SequenceMatcher(None, key, candidate).ratio())


def _config_of(argv: list[str]):
  """The config the --config.KEY overrides apply to, None if there is none.

  A file flag that failed on an override has no value yet (config_flags
  checks the overrides while loading the file): load the file again.
  """
  if 'config' not in flags.FLAGS:
    return None
  flag = flags.FLAGS['config']
  if isinstance(flag.value, ml_collections.ConfigDict):
    return flag.value
  paths = [a.split('=', 1)[1] for a in argv[1:]
           if a.startswith(('--config=', '-config='))]
  if _config_file_flag() is None or not paths:
    return None
  try:
    config = ConfigFileFlagParser('config').parse(paths[-1])
  except (OSError, TypeError, ValueError):
    return None
  return config if isinstance(config, ml_collections.ConfigDict) else None


def _leaves(config, prefix: str = ''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _one_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _command() -> str:
  """The running command's module, as `python -m` takes it."""
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  return spec.name if spec is not None else sys.argv[0]


def _usage_error(message: str):
  print(f'error: {message}', file=sys.stderr)
  print(f'(python -m {_command()} --help lists the flags)', file=sys.stderr)
  sys.exit(USAGE_ERROR)


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
  from danil_jax.runtime import faults
  from danil_jax.runtime import host_failures
  from danil_jax.runtime import run_config
  from danil_jax.data_prep import common

  # pylint: enable=g-import-not-at-top
  with host_failures.end_every_host():
    try:
      yield
    except (common.ManualFilesMissing, common.DataError,
            configs.ConfigError, run_config.ConfigChanged,
            weights.ConversionError, faults.NonFiniteError,
            checkpointing.CheckpointError) as e:
      sys.exit(f'error: {e}')


def define_join_flags():
  """Defines --config.distributed and --config.distributed_init.*."""
  defaults = default.get_config()
  join = ml_collections.ConfigDict(dict(
      distributed=defaults.distributed,
      distributed_init=defaults.distributed_init))
  return define_config_dict(
      join, 'Joining the hosts of a pod, as for danil_jax.main: '
      '--config.distributed=True [--config.distributed_init.*].')


def define_config_dict(config: ml_collections.ConfigDict, help_text: str):
  """config_flags.DEFINE_config_dict('config', ...), locked; an override of
  a key `config` lacks ends the command as in `run` (config_flags applies
  the command line's overrides here, when the flag is defined)."""
  try:
    return config_flags.DEFINE_config_dict('config', config, help_text,
                                           lock_config=True)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    _usage_error(_misspelt_key(sys.argv, config) or _one_line(e))


@contextlib.contextmanager
def command_errors_exit(join=None):
  """For the commands that read a trained run: quiet logs unless
  --verbosity was given; joins the hosts if `join` (define_join_flags's
  value) has distributed=True; a bad flag or missing file ends the command
  with its message alone (on every host, `errors_exit`)."""
  if join is not None:
    setup(join)
  elif not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  with errors_exit():
    try:
      yield
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f'error: {e}')
