"""danil-jax: DANIL (Gong, Ma & Zheng, MICCAI 2020) in JAX/Flax.

The public loss is `from danil_jax import losses` (danil_jax.losses). The
modules directly here are the commands (`python -m danil_jax.main`,
evaluate, predict, response_maps, compare, paper, convert, plots); the rest
is grouped by concern into layers, each importing only the ones before it:

  method -> models -> runtime -> evaluation -> trainer -> experiments

docs/architecture.md says what each holds; tests/test_layout.py holds the
rule.

`pip install danil-jax` brings the method alone (jax and optax); the
trainer, data and evaluation need the `train` extra.
"""

# The one place the version is written: pyproject.toml reads it
# (setuptools dynamic version), CHANGELOG.md lists what each one changed.
__version__ = '0.2.0'

