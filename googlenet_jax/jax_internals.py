"""Every private JAX interface this code uses, in one place.

JAX has no public API for these. Each is written against jax 0.10.2;
tests/test_jax_internals.py fails, naming what changed, when a JAX release
moves or reshapes one.
"""

from jax._src import cloud_tpu_init
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
