"""Joining several processes (Cloud TPU pod hosts, GPU nodes) into one JAX runtime."""

import jax


def initialize(coordinator_address: str = '', num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize`.

  On Cloud TPU VMs (and under SLURM or Open MPI) JAX detects the coordinator, the
  number of processes and this process's id itself; elsewhere pass all three.
  """
  # Processes on CPUs exchange collectives through gloo; GPUs and TPUs ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address or None, num_processes, process_id)
