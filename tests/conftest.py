"""Every test process sees 8 CPU devices, as a TPU host would.

Compiled programs are cached on disk for the session, so the same GoogLeNet step
compiles once even when several tests (and their subprocesses) build it.
"""

import os
import tempfile

import chex
import jax

chex.set_n_cpu_devices(8)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='googlenet_jax_test_cache_'))
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
