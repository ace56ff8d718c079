"""JAX's persistent compilation cache: a second start reuses the compiled steps.

Compiling GoogLeNet's train step takes seconds on a GPU and more on a CPU; a
resumed, evaluated or re-run job with the same config, JAX version and devices
loads it from the cache instead. Entries are keyed by the program and the
backend, so one directory serves every config and machine that shares it.

On a run of several processes (pod hosts) every process keeps its own entries:
a pmapped program's key differs from process to process (its devices and their
order are part of it), and JAX writes entries from process 0 only, so without
`jax_internals.write_cache_on_every_process` hosts 1, 2, ... compiled every
program again at every start. Each host's cache is its own directory (the
default is under ~), so no two hosts write one file. JAX's own
jax_share_binary_between_hosts does not do this job: docs/pods.md.
"""

import os

import jax

from googlenet_jax.runtime import jax_internals


def enable(directory: str) -> None:
  """Caches compiled programs in `directory` (`~` expanded); '' leaves it off."""
  if not directory:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  # Also the eval step and the initialisation, which compile in under a second
  # on an accelerator: every start pays for them.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
  # JAX has no option for the cache writes of processes other than 0.
  jax_internals.write_cache_on_every_process()
