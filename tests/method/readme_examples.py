"""The README's loss examples, as the text a user copies.

Standard library only, so that CI can take the plain-function example out of
the README and run it in a virtual environment holding the wheel alone:

  python tests/method/readme_examples.py plain > example.py
"""

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'README.md')
SECTION = '## The loss in your own code'
# The section's python blocks, in order.
NAMES = ('plain', 'linen', 'nnx', 'equinox')


def loss_examples() -> dict[str, str]:
  """{name: code} of the python blocks of the README's loss section."""
  with open(README) as f:
    text = f.read()
  section = text[text.index(SECTION):]
  section = section[:section.index('\n## ', len(SECTION))]
  blocks = re.findall(r'^```python\n(.*?)^```', section, re.S | re.M)
  if len(blocks) != len(NAMES):
    raise ValueError(f'{README}: {len(blocks)} python blocks under '
                     f'{SECTION!r}, expected {len(NAMES)} ({NAMES})')
  return dict(zip(NAMES, blocks))


if __name__ == '__main__':
  sys.stdout.write(loss_examples()[sys.argv[1]])
