"""Joining several processes (Cloud TPU pod hosts, GPU nodes) into one JAX runtime,
and checking that they start from the same place.

On a Cloud TPU pod slice the same command runs on every host (`--worker=all`);
JAX reads the hosts, their number and this host's id from the TPU VM's metadata,
so no flag is needed there; `--coordinator_address` alone moves the coordinator
to another port (JAX's is 8482). Elsewhere (CPU and GPU clusters) pass
--coordinator_address, --num_processes and --process_id, or --distributed under
SLURM or Open MPI.
"""

import hashlib

import jax
from jax.experimental import multihost_utils
import numpy as np

from googlenet_jax.errors import UserError
from googlenet_jax.runtime import jax_internals


def initialize(requested: bool = False, coordinator_address: str = '',
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Joins this process to the others of the run, if there are others.

  Calls `jax.distributed.initialize` when asked to (`requested`, or a
  coordinator address) and, with no arguments, on a Cloud TPU VM. JAX fills in
  what is not given: on a TPU VM, the number of processes and this one's id
  from the metadata server, so a coordinator address alone moves the port.
  Then starts JAX's backends. Call it before anything else uses JAX.

  Raises:
    UserError: the processes cannot be joined (no cluster found, the coordinator
      not reached in time), JAX cannot start its devices, or JAX sees several
      processes that no distributed client joins (they could neither agree on a
      stop nor check their steps): a clear line instead of a run that hangs or
      dies without a checkpoint.
  """
  if requested or coordinator_address or jax_internals.tpu_slice_found():
    # Processes on CPUs exchange collectives through gloo; GPUs and TPUs ignore this.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    try:
      jax.distributed.initialize(coordinator_address or None, num_processes,
                                 process_id)
    except (ValueError, RuntimeError) as e:  # No cluster found; a timeout.
      raise UserError(f'Cannot join the processes of the run ({first_line(e)}): give '
                      '--coordinator_address, --num_processes and --process_id, '
                      'the same address on every process.') from e
  try:
    process_count = jax.process_count()  # Starts JAX's backends.
  except RuntimeError as e:  # On a TPU VM, libtpu refusing the chips.
    raise UserError(f'JAX could not start its devices: {first_line(e)}') from e
  if process_count > 1 and not jax.distributed.is_initialized():
    raise UserError(
        f'This is process {jax.process_index()} of {process_count}, but no '
        'jax.distributed client joins them, so they could not stop together or '
        'check that they resume the same step: run with --distributed, or with '
        '--coordinator_address, --num_processes and --process_id.')


def first_line(e: Exception) -> str:
  """The first line of `e`'s message (at most 300 characters), or its type's name."""
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__


def config_digest(config_text: str) -> int:
  """A 31-bit digest of a config's text, equal for equal configs."""
  return int.from_bytes(hashlib.sha256(config_text.encode()).digest()[:4], 'big') >> 1


def check_hosts_agree(step: int, config_text: str, workdir: str) -> None:
  """Stops every process, with one line, unless all resume `step` of the same config.

  `config_text` is the whole config, keys sorted (`Experiment.config_text`).

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
  mine = np.array([step, config_digest(config_text)], np.int32)
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
