"""The data commands' old names, from the repository root only.

The builders live in danil_jax.data_prep, which the wheel installs; this
folder is not installed. `python -m data_prep.build ...` and
`python -m data_prep.make_dummy_data ...` run the new commands
(`python -m danil_jax.data_prep.build`, `...make_dummy_data`) after a
one-line note.
"""

import sys


def note(old: str, new: str) -> None:
  print(f'note: `python -m {old}` is now `python -m {new}`', file=sys.stderr)
