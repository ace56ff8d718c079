"""JAX's persistent compilation cache: a second start reuses the compiled steps.

Compiling GoogLeNet's train step takes seconds on a GPU and more on a CPU; a
resumed, evaluated or re-run job with the same config, JAX version and devices
loads it from the cache instead. Entries are keyed by the program and the
backend, so one directory serves every config and machine that shares it.
"""

import os

import jax


def enable(directory: str) -> None:
  """Caches compiled programs in `directory` (`~` expanded); '' leaves it off."""
  if not directory:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  # Also the eval step and the initialisation, which compile in under a second
  # on an accelerator: every start pays for them.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
