"""The shipped run configs: `get_config()` in each module returns a locked
ConfigDict; default.py holds every key, the others override it.

Name one with `--config=configs/NAME.py` from the repository root (where
configs/ links here) or `--config=NAME` from any directory.

May import: ml_collections only; nothing else of danil_jax.
"""


class ConfigError(ValueError):
  """A config value outside what danil-jax accepts: names the key, the value
  and what is allowed (danil_jax/trainer/config_checks.py)."""
