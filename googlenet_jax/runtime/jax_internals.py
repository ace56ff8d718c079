"""Every private JAX interface this code uses, in one place.

JAX has no public API for these. Each is written against jax 0.10.2;
tests/test_jax_internals.py fails, naming what changed, when a JAX release
moves or reshapes one.
"""

from absl import logging
import jax
from jax._src import cloud_tpu_init
from jax._src import compilation_cache
from jax._src import compiler
from jax._src import distributed
from jax._src.clusters import cloud_tpu_cluster


def on_cloud_tpu_vm() -> bool:
  """Whether JAX took this machine for a Cloud TPU VM when it was imported.

  JAX does when it finds TPU chips and libtpu, or when JAX_FORCE_TPU_INIT is
  set; it then starts its TPU backend before the CPU's.
  """
  return cloud_tpu_init.running_in_cloud_tpu_vm


def tpu_slice_found() -> bool:
  """Whether JAX finds the hosts of a Cloud TPU slice itself (GCE or GKE TPU VMs).

  On a GCE TPU VM this asks the metadata server (GCE_METADATA_IP) for this
  host's number.
  """
  return any(cluster.is_env_present() for cluster in
             (cloud_tpu_cluster.GceTpuCluster, cloud_tpu_cluster.GkeTpuCluster))


def write_cache_on_every_process() -> None:
  """Makes every process, not only process 0, write its compiled programs.

  JAX's `compiler._cache_write` (0.10 to 0.12) returns at once on processes other than 0
  (to spare a directory shared by all hosts, on GCS, concurrent writes of one
  entry). Its other conditions stay: programs that compiled in under
  `jax_persistent_cache_min_compile_time_secs`, or that hold host callbacks,
  are not written.
  """
  jax_write = compiler._cache_write  # pylint: disable=protected-access
  if getattr(jax_write, 'on_every_process', False):
    return

  # JAX 0.10 passes the program's host callbacks last; JAX 0.12 no longer does.
  def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                  *host_callbacks):
    if (distributed.global_state.process_id == 0 or any(host_callbacks) or
        compile_time_secs < jax.config.jax_persistent_cache_min_compile_time_secs):
      return jax_write(cache_key, compile_time_secs, module_name, backend,
                       executable, *host_callbacks)
    try:
      compilation_cache.put_executable_and_time(
          cache_key, module_name, executable, backend, int(compile_time_secs))
    except Exception as e:  # pylint: disable=broad-except
      # As JAX does: a cache that cannot be written costs time, not the run.
      logging.warning('Cannot write the compilation cache entry of %s: %s',
                      module_name, e)

  cache_write.on_every_process = True
  compiler._cache_write = cache_write  # pylint: disable=protected-access
