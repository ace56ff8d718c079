"""Joining several processes (Cloud TPU pod hosts, GPU nodes) into one JAX runtime,
and checking that they start from the same place.

On a Cloud TPU pod slice the same command runs on every host (`--worker=all`);
JAX reads the hosts, their number and this host's id from the TPU VM's metadata,
so no flag is needed there. Elsewhere (CPU and GPU clusters) pass
--coordinator_address, --num_processes and --process_id, or --distributed under
SLURM or Open MPI.
"""

import hashlib

import jax
from jax._src.clusters import cloud_tpu_cluster  # JAX has no public "on a pod?".
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from googlenet_jax.errors import UserError


def on_cloud_tpu_vm_cluster() -> bool:
  """Whether JAX can find the hosts itself: a Cloud TPU VM (GCE or GKE) of a slice."""
  return any(cluster.is_env_present() for cluster in
             (cloud_tpu_cluster.GceTpuCluster, cloud_tpu_cluster.GkeTpuCluster))


def initialize(requested: bool = False, coordinator_address: str = '',
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Joins this process to the others of the run, if there are others.

  Calls `jax.distributed.initialize` when asked to (`requested`, or a
  coordinator address) and, with no arguments, on a Cloud TPU VM. Call it
  before anything else uses JAX.

  Raises:
    UserError: the processes cannot be joined (no cluster found, the coordinator
      not reached in time), or JAX sees several processes that no distributed
      client joins (they could neither agree on a stop nor check their steps): a
      clear line instead of a run that hangs or dies without a checkpoint.
  """
  if requested or coordinator_address or on_cloud_tpu_vm_cluster():
    # Processes on CPUs exchange collectives through gloo; GPUs and TPUs ignore this.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    try:
      jax.distributed.initialize(coordinator_address or None, num_processes,
                                 process_id)
    except (ValueError, RuntimeError) as e:  # No cluster found; a timeout.
      reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
      raise UserError(f'Cannot join the processes of the run ({reason}): give '
                      '--coordinator_address, --num_processes and --process_id, '
                      'the same address on every process.') from e
  if jax.process_count() > 1 and not jax.distributed.is_initialized():
    raise UserError(
        f'This is process {jax.process_index()} of {jax.process_count()}, but no '
        'jax.distributed client joins them, so they could not stop together or '
        'check that they resume the same step: run with --distributed, or with '
        '--coordinator_address, --num_processes and --process_id.')


def config_digest(config: ml_collections.ConfigDict) -> int:
  """A 31-bit digest of every field of `config`, equal for equal configs."""
  text = config.to_json_best_effort(sort_keys=True)
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], 'big') >> 1


def check_hosts_agree(step: int, config: ml_collections.ConfigDict,
                      workdir: str) -> None:
  """Stops every process, with one line, unless all resume `step` of the same config.

  Each process restores the latest checkpoint that it sees. With a workdir of
  each host's own, only process 0's holds the arrays, so the others would start
  again at step 0: their loops would differ in length and the collectives wait
  for ever, or abort. Every process must call this before it restores (Orbax's
  restore is itself a collective), with the step it is about to resume.

  Raises:
    UserError: on every process, naming the step each process resumed.
  """
  if jax.process_count() == 1:
    return
  mine = np.array([step, config_digest(config)], np.int32)
  steps, digests = multihost_utils.process_allgather(mine).T
  if len(set(steps)) > 1:
    seen = ', '.join(f'process {i}: step {s}' for i, s in enumerate(steps))
    raise UserError(
        f'The hosts would resume different steps ({seen}) from the workdir {workdir}: '
        'it must be one directory shared by all hosts, e.g. a gs:// bucket, not '
        "each host's own. Nothing was trained.")
  if len(set(digests)) > 1:
    differ = ', '.join(str(i) for i, d in enumerate(digests) if d != digests[0])
    raise UserError(
        f'The config of process {differ} differs from that of process 0: run the '
        'same command, with the same --config flags, on every host.')
