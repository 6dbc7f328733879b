"""`python -m data_prep.make_dummy_data`: see
danil_jax/data_prep/make_dummy_data.py."""

import sys

import data_prep
from danil_jax.data_prep import make_dummy_data

if __name__ == '__main__':
  data_prep.note('data_prep.make_dummy_data',
                 'danil_jax.data_prep.make_dummy_data')
  make_dummy_data.main(sys.argv[1:])
