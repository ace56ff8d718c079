"""The package's layers: runtime/ imports nothing of the core, the core nothing of tools/.

Read from the source's import statements, as docs/design.md draws them.
"""

import ast
import glob
import os

from conftest import REPO

# Lower layers first; a module may import its own layer and those below.
LAYERS = ('googlenet_jax.errors', 'googlenet_jax.runtime', 'googlenet_jax', 'googlenet_jax.tools')


def layer(module: str) -> int:
  """The index in LAYERS of the longest prefix that names `module`'s layer."""
  return max((i for i, prefix in enumerate(LAYERS)
              if module == prefix or module.startswith(prefix + '.')),
             key=lambda i: len(LAYERS[i]))


def package_imports() -> dict[str, set[str]]:
  """Each module of the package and the package modules it imports."""
  paths = glob.glob(os.path.join(REPO, 'googlenet_jax', '**', '*.py'), recursive=True)
  modules = {os.path.relpath(p, REPO)[:-3].replace(os.sep, '.').removesuffix('.__init__'): p
             for p in paths}
  imports = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('googlenet_jax'):
        for alias in node.names:
          name = f'{node.module}.{alias.name}'
          found.add(name if name in modules else node.module)
    imports[module] = found - {module}
  return imports


def test_no_module_imports_a_layer_above_its_own():
  upward = sorted((module, imported) for module, found in package_imports().items()
                  for imported in found if layer(imported) > layer(module))
  assert not upward
  assert layer('googlenet_jax.runtime.checkpoint') < layer('googlenet_jax.train')


def test_the_package_has_no_import_cycle():
  imports = package_imports()
  done, path = set(), []

  def visit(module):
    assert module not in path, ' -> '.join(path[path.index(module):] + [module])
    if module in done:
      return
    path.append(module)
    for imported in imports.get(module, ()):
      visit(imported)
    path.pop()
    done.add(module)

  for module in imports:
    visit(module)
