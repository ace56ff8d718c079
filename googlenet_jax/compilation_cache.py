"""JAX's persistent compilation cache: a second start reuses the compiled steps.

Compiling GoogLeNet's train step takes seconds on a GPU and more on a CPU; a
resumed, evaluated or re-run job with the same config, JAX version and devices
loads it from the cache instead. Entries are keyed by the program and the
backend, so one directory serves every config and machine that shares it.

On a run of several processes (pod hosts) every process keeps its own entries:
a pmapped program's key differs from process to process (its devices and their
order are part of it), and JAX writes entries from process 0 only, so without
`write_on_every_process` hosts 1, 2, ... compiled every program again at every
start. Each host's cache is its own directory (the default is under ~), so no
two hosts write one file.
"""

import os

from absl import logging
import jax
# JAX has no option for the cache writes of processes other than 0.
from jax._src import compilation_cache as jax_compilation_cache
from jax._src import compiler as jax_compiler
from jax._src import distributed as jax_distributed


def enable(directory: str) -> None:
  """Caches compiled programs in `directory` (`~` expanded); '' leaves it off."""
  if not directory:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  # Also the eval step and the initialisation, which compile in under a second
  # on an accelerator: every start pays for them.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
  write_on_every_process()


def write_on_every_process() -> None:
  """Makes every process, not only process 0, write its compiled programs.

  JAX's `compiler._cache_write` (0.10 to 0.12) returns at once on processes other than 0
  (to spare a directory shared by all hosts, on GCS, concurrent writes of one
  entry). Its other conditions stay: programs that compiled in under
  `jax_persistent_cache_min_compile_time_secs`, or that hold host callbacks,
  are not written.
  """
  jax_write = jax_compiler._cache_write  # pylint: disable=protected-access
  if getattr(jax_write, 'on_every_process', False):
    return

  # JAX 0.10 passes the program's host callbacks last; JAX 0.12 no longer does.
  def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                  *host_callbacks):
    if (jax_distributed.global_state.process_id == 0 or any(host_callbacks) or
        compile_time_secs < jax.config.jax_persistent_cache_min_compile_time_secs):
      return jax_write(cache_key, compile_time_secs, module_name, backend,
                       executable, *host_callbacks)
    try:
      jax_compilation_cache.put_executable_and_time(
          cache_key, module_name, executable, backend, int(compile_time_secs))
    except Exception as e:  # pylint: disable=broad-except
      # As JAX does: a cache that cannot be written costs time, not the run.
      logging.warning('Cannot write the compilation cache entry of %s: %s',
                      module_name, e)

  cache_write.on_every_process = True
  jax_compiler._cache_write = cache_write  # pylint: disable=protected-access
