"""The README is a front page: short; it and the guides hold no history.

Measurements, the science and the details live in the guides under docs/
(built by `mkdocs build --strict`, .ci/run).
"""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_README_LINES = 300
# Issue and pull-request references and commit hashes: history, not usage.
HISTORY = (r'\bissues? \d+', r'(?<![\w&/])#\d+\b',
           r'\bcommits? [0-9a-f]{7,40}\b')


def _readme() -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    return f.read()


def test_the_readme_is_a_front_page_of_at_most_300_lines():
  lines = _readme().count('\n')
  assert lines <= MAX_README_LINES, (
      f'README.md has {lines} lines; move details to a guide in docs/')


def _user_facing() -> list[str]:
  """README.md and the guides of the site."""
  docs = os.path.join(REPO, 'docs')
  return ['README.md'] + sorted(
      os.path.join('docs', n) for n in os.listdir(docs) if n.endswith('.md'))


def test_the_readme_and_the_guides_name_no_issues_or_commits():
  found = []
  for name in _user_facing():
    with open(os.path.join(REPO, name)) as f:
      for n, line in enumerate(f.read().splitlines(), 1):
        if any(re.search(pattern, line, re.I) for pattern in HISTORY):
          found.append(f'  {name}:{n}: {line}')
  assert not found, 'history in user-facing text:\n' + '\n'.join(found)


def test_every_guide_in_the_site_exists():
  with open(os.path.join(REPO, 'mkdocs.yml')) as f:
    pages = re.findall(r':\s*([\w/]+\.md)\s*$', f.read(), re.M)
  assert 'api.md' in pages and 'architecture.md' in pages
  missing = [p for p in pages
             if not os.path.exists(os.path.join(REPO, 'docs', p))]
  assert not missing, missing
