"""The private JAX names that googlenet_jax/runtime/jax_internals.py uses, as it uses them.

When a JAX release moves or reshapes one, a test fails naming the name, the JAX
version and what it found there instead.
"""

import glob
import importlib
import inspect
import os
import re

import jax
import pytest

from conftest import REPO

# Functions: the parameter lists jax_internals.py calls (or replaces) them with.
FUNCTIONS = {
    # Replaced by one that takes both: JAX 0.10 passes the host callbacks last,
    # JAX 0.12 no longer does.
    'jax._src.compiler._cache_write': (
        ['cache_key', 'compile_time_secs', 'module_name', 'backend', 'executable',
         'host_callbacks'],
        ['cache_key', 'compile_time_secs', 'module_name', 'backend', 'executable']),
    'jax._src.compilation_cache.put_executable_and_time': (
        ['cache_key', 'module_name', 'executable', 'backend', 'compile_time'],),
    'jax._src.clusters.cloud_tpu_cluster.GceTpuCluster.is_env_present': ([],),
    'jax._src.clusters.cloud_tpu_cluster.GkeTpuCluster.is_env_present': ([],),
}
# Values: the type jax_internals.py reads them as.
VALUES = {
    'jax._src.cloud_tpu_init.running_in_cloud_tpu_vm': bool,
    'jax._src.distributed.global_state.process_id': int,
}


def resolve(path: str):
  """The object at `path`: the longest importable module, then attributes."""
  parts = path.split('.')
  for split in range(len(parts), 0, -1):
    try:
      found = importlib.import_module('.'.join(parts[:split]))
    except ImportError:
      continue
    for depth in range(split, len(parts)):
      if not hasattr(found, parts[depth]):
        pytest.fail(f'JAX {jax.__version__} has no {".".join(parts[:depth + 1])}, '
                    f'which jax_internals.py uses ({path}).')
      found = getattr(found, parts[depth])
    return found
  pytest.fail(f'JAX {jax.__version__} has no module of {path}.')


@pytest.mark.parametrize('path', FUNCTIONS)
def test_a_private_function_takes_what_jax_internals_passes(path):
  parameters = list(inspect.signature(resolve(path)).parameters)
  assert parameters in [list(p) for p in FUNCTIONS[path]], (
      f'{path} takes ({", ".join(parameters)}) in JAX {jax.__version__}; '
      'jax_internals.py passes ' +
      ' or '.join(f'({", ".join(p)})' for p in FUNCTIONS[path]) + '.')


@pytest.mark.parametrize('path', VALUES)
def test_a_private_value_has_the_type_jax_internals_reads(path):
  value = resolve(path)
  assert isinstance(value, VALUES[path]), (
      f'{path} is a {type(value).__name__} in JAX {jax.__version__}, not the '
      f'{VALUES[path].__name__} jax_internals.py reads.')


def test_only_jax_internals_uses_private_jax_and_each_module_it_imports_is_checked():
  sources = glob.glob(os.path.join(REPO, 'googlenet_jax', '**', '*.py'), recursive=True)
  users = []
  for path in [*sources, os.path.join(REPO, 'main.py')]:
    with open(path) as f:
      if 'jax._src' in f.read():
        users.append(os.path.relpath(path, REPO))
  assert users == ['googlenet_jax/runtime/jax_internals.py'], users
  with open(os.path.join(REPO, 'googlenet_jax/runtime/jax_internals.py')) as f:
    imported = [f'{package}.{name}' for package, name in
                re.findall(r'^from (jax\._src\S*) import (\w+)', f.read(), re.M)]
  checked = {*FUNCTIONS, *VALUES}
  unchecked = [module for module in imported
               if not any(path.startswith(module + '.') for path in checked)]
  assert unchecked == [], unchecked
