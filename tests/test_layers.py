"""The package's imports point one way: commands → µP tools → training / evaluation → growth,
checkpoint, data → model, sharding → config.  Every import counts, function-level ones too."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'flmjax')

# Lowest first; a module may import its own layer or below, never above.
LAYERS = [
    ('flmjax.config', 'flmjax.params', 'flmjax.storage', 'flmjax.host_memory'),
    ('flmjax.mup', 'flmjax.attention', 'flmjax.model', 'flmjax.sharding', 'flmjax.optimizer',
     'flmjax.storage.metrics', 'flmjax.distributed', 'flmjax.synthetic_data'),
    ('flmjax.growth_ops', 'flmjax.growth', 'flmjax.storage.checkpoint',
     'flmjax.storage.workdir_lock', 'flmjax.data', 'flmjax.plan', 'flmjax.sampling',
     'flmjax.plot', 'flmjax.curves'),
    ('flmjax.experiment', 'flmjax.training', 'flmjax.evaluation'),
    ('flmjax.scaling',),
    ('flmjax.commands', 'flmjax.cli'),
]


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(d, f)
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """flmjax modules imported anywhere in the file (`from flmjax import x` counts as flmjax.x)."""
  found = set()
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
    else:
      continue
    for n in names:
      while n and n not in modules:
        n = n.rpartition('.')[0]
      if n.startswith('flmjax.'):
        found.add(n)
  return found


def _layer(module: str) -> int:
  """The layer of the longest listed prefix: `flmjax.storage` (the package) is low, its modules
  each sit in their own layer."""
  found = [(len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes
           if module == p or module.startswith(p + '.')]
  if not found:
    raise AssertionError(f'{module} is in no layer of tests/test_layers.py: place it')
  return max(found)[1]


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items() if m != 'flmjax'}


def test_every_import_points_down():
  upward = [f'{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})'
            for m, deps in _graph().items() for d in deps
            if d != 'flmjax' and not _is_package_of(d, m) and _layer(d) > _layer(m)]
  assert not upward, '\n'.join(sorted(upward))


def _is_package_of(pkg: str, module: str) -> bool:
  return module.startswith(pkg + '.')


def test_no_import_circle():
  graph = _graph()
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> None:
    state[m] = 1
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if _is_package_of(d, m):  # a package's __init__ is not part of a circle through its own
        continue                # modules unless it imports them back (checked below)
      if state.get(d) == 1:
        raise AssertionError('import circle: ' + ' → '.join(stack[stack.index(d):] + [d]))
      if d in graph and not state.get(d):
        visit(d)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if not state.get(m):
      visit(m)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
  """The walker itself: a planted circle and an upward import are found."""
  pkg = tmp_path / 'flmjax'
  (pkg / 'training').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'training' / '__init__.py').write_text('')
  (pkg / 'config.py').write_text('def f():\n  from flmjax.training import loop\n')
  (pkg / 'training' / 'loop.py').write_text('from flmjax import config\n')
  monkeypatch.setattr(__import__(__name__), 'PKG', str(pkg))
  monkeypatch.setattr(__import__(__name__), 'ROOT', str(tmp_path))
  try:
    test_no_import_circle()
  except AssertionError as e:
    assert 'flmjax.config → flmjax.training.loop → flmjax.config' in str(e)
  else:
    raise AssertionError('the planted circle was not found')
  try:
    test_every_import_points_down()
  except AssertionError as e:
    assert 'flmjax.config (layer 0) imports flmjax.training.loop (layer 3)' in str(e)
  else:
    raise AssertionError('the planted upward import was not found')
