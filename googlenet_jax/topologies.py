"""Compile-only devices of an accelerator, on a host that has none of its chips.

libtpu (requirements.txt) describes TPU slices. It needs JAX to compute on the
CPU only, set before JAX starts a backend: `prepare_host`.
"""

import importlib
import os
from typing import NamedTuple

import jax

from googlenet_jax import accelerators
from googlenet_jax.errors import UserError


class Compiler(NamedTuple):
  """What compiles for one platform, and what to install when it is missing."""
  name: str
  modules: tuple[str, ...]  # What it needs importable.
  missing: str  # What to install if one is not.


COMPILERS = {
    'tpu': Compiler('libtpu', ('libtpu',),
                    'Compiling for a TPU needs libtpu, which is not installed: pip install '
                    '-r requirements.txt (libtpu==0.0.42.1).'),
}


def check_compiler(platform: str) -> None:
  """UserError saying what to install if the compiler for `platform` is missing."""
  compiler = COMPILERS[platform]
  try:
    for module in compiler.modules:
      importlib.import_module(module)
  except ImportError as e:
    raise UserError(compiler.missing) from e


def prepare_host(name: str | None) -> accelerators.Accelerator:
  """Sets up this process to compile for `name`; call before JAX starts any backend.

  JAX computes on this host's CPU only (a TPU VM's own chips are left alone),
  libtpu asks no metadata server (a laptop has none: the compile never reaches
  the network), and it loads even while another JAX process on the machine
  holds libtpu's lock file.
  """
  accelerator = accelerators.get(name)
  check_compiler(accelerator.platform)
  os.environ['TPU_SKIP_MDS_QUERY'] = '1'
  os.environ['ALLOW_MULTIPLE_LIBTPU_LOAD'] = '1'
  # What the metadata server would have said; without them libtpu warns in
  # several lines that it could not ask.
  os.environ['TPU_ACCELERATOR_TYPE'] = accelerator.name
  os.environ['TPU_WORKER_HOSTNAMES'] = 'localhost'
  jax.config.update('jax_platforms', 'cpu')
  return accelerator


def devices(accelerator: accelerators.Accelerator) -> list[jax.Device]:
  """Compile-only devices of the accelerator, one per chip, of every host."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(
        platform='tpu', topology_name=accelerator.topology,
        chip_config_name=accelerator.chip.chip_config,
        chips_per_host_bounds=accelerator.host_bounds, num_slices=1)
  except jax.errors.JaxRuntimeError as e:
    raise UserError(f'{COMPILERS[accelerator.platform].name} could not describe '
                    f'{accelerator.name} ({accelerator.topology}): '
                    f'{str(e).splitlines()[0]}') from e
  return list(topology.devices)
