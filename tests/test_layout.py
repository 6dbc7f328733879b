"""The package layout: the layers import only downwards, the documented
commands and the public loss import work.

The layers and what each may use are in docs/architecture.md. The rule is
read from the source (every import, those inside functions included), so a
new module is held to it without being listed here.
"""

import ast
import importlib
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'danil_jax')

# Bottom to top; a module may import its own layer and those before it.
# configs and data_prep import nothing of danil_jax but themselves (below).
LAYERS = ('configs', 'data_prep', 'method', 'models', 'runtime', 'evaluation',
          'trainer', 'experiments')
COMMANDS = ('main', 'evaluate', 'predict', 'response_maps', 'compare',
            'paper', 'convert', 'plots')
TOP_LEVEL = set(COMMANDS) | {'__init__', 'losses'}


def _modules():
  """danil_jax's modules as (dotted name, path)."""
  for root, _, names in os.walk(PACKAGE):
    for name in sorted(names):
      if name.endswith('.py'):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        yield rel.removesuffix('.__init__'), path


def _imports(name: str, path: str) -> set[str]:
  """The danil_jax modules `name` imports, anywhere in its file."""
  tree = ast.parse(open(path).read(), path)
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] +
                        ([node.module] if node.module else []))
      # `from a import b`: b may be a module or a name in a.
      for alias in node.names:
        full = f'{base}.{alias.name}'
        found.add(full if _is_module(full) else base)
  return {m for m in found if m.split('.')[0] == 'danil_jax'}


def _is_module(dotted: str) -> bool:
  path = os.path.join(REPO, *dotted.split('.'))
  return os.path.isfile(path + '.py') or os.path.isdir(path)


def _layer(module: str) -> int:
  """Index into LAYERS; the commands and the public facade are above all."""
  parts = module.split('.')
  if len(parts) == 1:
    return len(LAYERS)  # the package itself: its docstring, nothing more
  if parts[1] in LAYERS:
    return LAYERS.index(parts[1])
  return len(LAYERS)


def test_each_layer_imports_only_itself_and_the_layers_below():
  upward = []
  for name, path in _modules():
    for imported in _imports(name, path):
      if _layer(imported) > _layer(name):
        upward.append(f'{name} imports {imported}')
  assert not upward, ('lower layers may not import upper ones '
                      f'({" -> ".join(LAYERS)} -> commands):\n' +
                      '\n'.join(sorted(upward)))


def test_no_import_cycles():
  graph = {name: _imports(name, path) - {name} for name, path in _modules()}
  # A package's __init__ runs before its modules: importing danil_jax.x.y
  # imports danil_jax.x, so edges to a module reach its package too.
  for deps in graph.values():
    deps.update({d.rpartition('.')[0] for d in list(deps)} -
                {'danil_jax', ''})
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node)
  # A subpackage's __init__ importing its own modules is no cycle at run
  # time (models/__init__.py's registry); any other is.
  cycles = [c for c in cycles
            if not all(m.startswith(c[0] + '.') or m == c[0] for m in c)]
  assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)


def test_data_prep_and_configs_import_nothing_else_of_danil_jax():
  offenders = []
  for name, path in _modules():
    top = name.split('.')[1] if '.' in name else None
    if top in ('data_prep', 'configs'):
      offenders += [f'{name} imports {m}' for m in _imports(name, path)
                    if m.split('.')[:2] != ['danil_jax', top]]
  assert not offenders, offenders


def test_the_wheel_installs_danil_jax_alone():
  """No generic top-level names (configs, data_prep) beside danil_jax:
  the package list and the old commands' folder at the root, which is not
  installed."""
  tomllib = pytest.importorskip('tomllib')
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    find = tomllib.load(f)['tool']['setuptools']['packages']['find']
  assert find['include'] == ['danil_jax*'], find
  assert os.path.realpath(os.path.join(REPO, 'configs')) == os.path.join(
      PACKAGE, 'configs')


def test_only_the_commands_and_the_public_loss_sit_at_the_top():
  files = {n[:-3] for n in os.listdir(PACKAGE) if n.endswith('.py')}
  assert files <= TOP_LEVEL, f'not commands: {sorted(files - TOP_LEVEL)}'
  assert len(os.listdir(PACKAGE)) - len(
      [n for n in os.listdir(PACKAGE) if n == '__pycache__']) <= 12 + len(
          LAYERS)
  assert len(files) <= 12


@pytest.mark.parametrize('layer', LAYERS)
def test_each_subpackage_says_what_it_holds_and_may_import(layer):
  init = os.path.join(PACKAGE, layer, '__init__.py')
  docstring = ast.get_docstring(ast.parse(open(init).read()))
  assert docstring and 'May import' in docstring, init


@pytest.mark.parametrize('old', ['data_prep.build', 'data_prep.make_dummy_data'])
def test_the_data_commands_old_names_still_run_from_the_repository_root(old):
  result = subprocess.run([sys.executable, '-m', old, '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert f'is now `python -m danil_jax.{old}`' in result.stderr
  assert 'usage' in result.stdout


def test_the_public_loss_import():
  from danil_jax import losses  # pylint: disable=g-import-not-at-top
  from danil_jax.losses import danil_loss  # pylint: disable=g-import-not-at-top
  method_losses = importlib.import_module('danil_jax.method.losses')
  assert danil_loss is losses.danil_loss is method_losses.danil_loss
  for name in ('cross_entropy_loss', 'ohem_loss', 'REDUCTIONS',
               'DEFAULT_REDUCTION'):
    assert getattr(losses, name) is getattr(method_losses, name)


def test_the_loss_defaults_to_the_trainers_reading():
  """So that the paper's lam acts alike in `danil_loss(...)` and in a run."""
  import inspect  # pylint: disable=g-import-not-at-top
  from danil_jax.configs import default  # pylint: disable=g-import-not-at-top
  from danil_jax import losses  # pylint: disable=g-import-not-at-top
  from danil_jax.method import misclassified_only  # pylint: disable=g-import-not-at-top
  trainer = default.get_config().danil.reduction
  assert losses.DEFAULT_REDUCTION == trainer
  for fn in (losses.danil_loss, misclassified_only.value_and_grad,
             misclassified_only.terms,
             misclassified_only.distraction_value_and_grad):
    assert inspect.signature(fn).parameters['reduction'].default == trainer


def _documented_commands() -> set[str]:
  text = ''
  for doc in ('README.md', os.path.join('danil_jax', 'data_prep',
                                        'README.md'),
              os.path.join('benchmarks', 'README.md')):
    path = os.path.join(REPO, doc)
    if os.path.exists(path):
      text += open(path).read()
  return set(re.findall(r'python -m (danil_jax(?:\.[a-z_]+)+)', text))


def test_the_readme_documents_the_commands_tested_here():
  documented = _documented_commands()
  assert {f'danil_jax.{c}' for c in COMMANDS} <= documented
  assert documented <= {f'danil_jax.{c}' for c in COMMANDS} | {
      'danil_jax.data_prep.build', 'danil_jax.data_prep.make_dummy_data'
  }, documented


def test_every_documented_command_answers_help():
  """Each `python -m ...` of the READMEs starts and parses its flags, in
  subprocesses (their absl flags would collide in one process)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = {m: subprocess.Popen([sys.executable, '-m', m, '--help'], cwd=REPO,
                               env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
           for m in sorted(_documented_commands())}
  failed = []
  for module, proc in procs.items():
    out, _ = proc.communicate(timeout=300)
    # Every command's --help exits 0 (runtime/cli.py for absl's, which
    # would exit 1); a crash is a traceback.
    if (proc.returncode != 0 or 'Traceback' in out or
        not re.search(r'usage|flags:', out, re.I)):
      failed.append(f'{module}: exit {proc.returncode}\n{out[-2000:]}')
  assert not failed, '\n'.join(failed)


# The `train` extra's import names: none may load with the method, which the
# core install (jax and optax) must run alone.
TRAIN_ONLY = ('flax', 'orbax', 'tensorflow_datasets', 'tensorflow', 'grain',
              'array_record', 'sklearn', 'ml_collections', 'PIL', 'tqdm',
              'matplotlib', 'safetensors', 'tensorboard', 'torch')


def test_the_public_loss_and_the_method_need_only_the_core_install():
  """`pip install danil-jax` (no extras) brings jax and optax: importing
  the loss and the method layer may load nothing of the `train` extra."""
  method = [f'danil_jax.method.{m[:-3]}'
            for m in sorted(os.listdir(os.path.join(PACKAGE, 'method')))
            if m.endswith('.py')]
  code = ('import sys\nimport danil_jax.losses\n' +
          ''.join(f'import {m}\n' for m in method) +
          'print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=300,
                          check=True)
  loaded = set(result.stdout.split())
  assert 'jax' in loaded and 'optax' in loaded
  assert not loaded & set(TRAIN_ONLY), sorted(loaded & set(TRAIN_ONLY))


def test_the_core_install_is_jax_and_optax_the_version_is_in_one_place():
  tomllib = pytest.importorskip('tomllib')
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    pyproject = tomllib.load(f)
  project = pyproject['project']
  names = {re.split(r'[\[<>=!~ ]', d)[0] for d in project['dependencies']}
  assert names == {'jax', 'optax'}, names
  assert {'train', 'cuda12', 'cuda13', 'tpu', 'dev'} <= set(
      project['optional-dependencies'])
  assert 'version' not in project and 'version' in project['dynamic']
  assert pyproject['tool']['setuptools']['dynamic']['version'] == {
      'attr': 'danil_jax.__version__'}
  assert os.path.exists(os.path.join(PACKAGE, 'py.typed'))


def _sh_blocks(text: str) -> list[list[str]]:
  return [block.strip().splitlines()
          for block in re.findall(r'^```sh\n(.*?)^```', text, re.S | re.M)]


def test_ci_runs_the_readmes_install_and_test_commands():
  """The README opens with the install and demo commands, then the test
  commands, which .ci/run runs as they are written."""
  readme = open(os.path.join(REPO, 'README.md')).read()
  (install, demo), tests = _sh_blocks(readme)[0], _sh_blocks(readme)[1]
  assert install.startswith('pip install -e ".[train'), install
  assert demo.startswith('python -m danil_jax.main'), demo
  ci = open(os.path.join(REPO, '.ci', 'run')).read().splitlines()
  assert tests and all(line in ci for line in tests), tests
