"""The public DANIL loss: `from danil_jax import losses`.

The loss lives in danil_jax.method.losses (its docstring derives Eqs. 2-6 and
the two batch readings of Algorithm 1); this module keeps the import path the
README documents, `from danil_jax.losses import danil_loss`, stable.
"""

from danil_jax.method.losses import cross_entropy_loss
from danil_jax.method.losses import danil_loss
from danil_jax.method.losses import DEFAULT_REDUCTION
from danil_jax.method.losses import ohem_loss
from danil_jax.method.losses import REDUCTIONS

__all__ = ['DEFAULT_REDUCTION', 'REDUCTIONS', 'cross_entropy_loss',
           'danil_loss', 'ohem_loss']
