"""The loss examples of the documentation, as the text a user copies.

Standard library only, so that CI can take the plain-function example out of
the README and run it in a virtual environment holding the wheel alone:

  python tests/method/readme_examples.py plain > example.py

The guide (docs/loss.md) holds all four examples; the README repeats the
first, word for word.
"""

import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUIDE = os.path.join(REPO, 'docs', 'loss.md')
README = os.path.join(REPO, 'README.md')
# The python blocks of the guide before its first '## ' section, in order.
NAMES = ('plain', 'linen', 'nnx', 'equinox')


def _python_blocks(text: str) -> list[str]:
  return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


def loss_examples() -> dict[str, str]:
  """{name: code} of the guide's loss examples."""
  with open(GUIDE) as f:
    text = f.read()
  blocks = _python_blocks(text[:text.index('\n## ')])
  if len(blocks) != len(NAMES):
    raise ValueError(f'{GUIDE}: {len(blocks)} python blocks before its '
                     f'first section, expected {len(NAMES)} ({NAMES})')
  return dict(zip(NAMES, blocks))


def readme_example() -> str:
  """The README's one python block: the guide's plain example."""
  with open(README) as f:
    blocks = _python_blocks(f.read())
  if len(blocks) != 1:
    raise ValueError(f'{README}: {len(blocks)} python blocks, expected 1')
  return blocks[0]


if __name__ == '__main__':
  sys.stdout.write(readme_example() if sys.argv[1] == 'readme'
                   else loss_examples()[sys.argv[1]])
