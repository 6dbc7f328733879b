"""`python -m data_prep.build`: see danil_jax/data_prep/build.py."""

import sys

import data_prep
from danil_jax.data_prep import build

if __name__ == '__main__':
  data_prep.note('data_prep.build', 'danil_jax.data_prep.build')
  sys.exit(build.main())
