"""Compile-only devices of an accelerator, on a host that has none of its chips.

libtpu (requirements.txt) describes TPU slices. JAX's CUDA plugin
(requirements-gpu-compile.txt) describes hosts of GPUs from XLA's spec of the
GPU (googlenet_jax/tools/gpu_specs/), with no GPU and no NVIDIA driver. Both need
JAX to compute on the CPU only, set before it starts a backend: `prepare_host`.

The CUDA plugin lives in a directory of its own, GPU_COMPILER_DIR, not in the
virtual environment: installed there, JAX would load it at every start of
every mode, and on a machine without a GPU print CUDA's failure to load (a
traceback) each time. Only the compile mode puts the directory on sys.path.
"""

import importlib
import importlib.metadata
import os
import sys
from typing import NamedTuple

import jax

from googlenet_jax.errors import UserError
from googlenet_jax.tools import accelerators


class Compiler(NamedTuple):
  """What compiles for one platform, and what to install when it is missing."""
  name: str
  modules: tuple[str, ...]  # What it needs importable.
  missing: str  # What to install if one is not.


# pip install --no-deps --target GPU_COMPILER_DIR -r requirements-gpu-compile.txt
GPU_COMPILER_DIR = os.environ.get(
    'GOOGLENET_JAX_GPU_COMPILER',
    os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                  os.pardir, '.gpu-compiler')))

COMPILERS = {
    'tpu': Compiler('libtpu', ('libtpu',),
                    'Compiling for a TPU needs libtpu, which is not installed: pip install '
                    '-r requirements.txt (libtpu==0.0.42.1).'),
    'gpu': Compiler("JAX's CUDA plugin",
                    ('jax_plugins.xla_cuda12', 'jax_cuda12_plugin', 'nvidia.cuda_nvcc'),
                    "Compiling for a GPU needs JAX's CUDA plugin and ptxas, which are not "
                    f'in {GPU_COMPILER_DIR}: pip install --no-deps --target '
                    f'{GPU_COMPILER_DIR} -r requirements-gpu-compile.txt (about 570 MB; '
                    'no GPU needed).'),
}


def gpu_compiler_version() -> str | None:
  """The version of JAX's CUDA plugin in GPU_COMPILER_DIR, or None where there is none."""
  found = list(importlib.metadata.distributions(name='jax-cuda12-plugin',
                                                path=[GPU_COMPILER_DIR]))
  return found[0].version if found else None


def check_compiler(platform: str) -> None:
  """UserError saying what to install if the compiler for `platform` is missing.

  A CUDA plugin of another JAX version is refused before JAX loads it: it
  would crash the process (a segmentation fault with jax 0.12 and plugin 0.10).
  """
  compiler = COMPILERS[platform]
  version = gpu_compiler_version() if platform == 'gpu' else None
  if version and version != jax.__version__:
    raise UserError(f"The GPU compiler in {GPU_COMPILER_DIR} is JAX's CUDA plugin "
                    f'{version}, but this is jax {jax.__version__}: install the plugin '
                    f'of jax {jax.__version__} there (requirements-gpu-compile.txt pins '
                    "requirements.txt's).")
  try:
    for module in compiler.modules:
      importlib.import_module(module)
  except ImportError as e:
    raise UserError(compiler.missing) from e


def prepare_host(name: str | None) -> accelerators.Accelerator:
  """Sets up this process to compile for `name`; call before JAX starts any backend.

  JAX computes on this host's CPU only: a TPU VM's own chips are left alone,
  and JAX's CUDA plugin skips its check of CUDA's libraries (which fails where
  they are not installed, and then leaves no CUDA topology). libtpu asks no metadata server (a
  laptop has none: the compile never reaches the network), and it loads even
  while another JAX process on the machine holds libtpu's lock file.
  """
  accelerator = accelerators.get(name)
  if accelerator.platform == 'gpu':
    sys.path.insert(0, GPU_COMPILER_DIR)  # Before JAX looks for its plugins.
  check_compiler(accelerator.platform)
  if accelerator.platform == 'tpu':
    os.environ['TPU_SKIP_MDS_QUERY'] = '1'
    os.environ['ALLOW_MULTIPLE_LIBTPU_LOAD'] = '1'
    # What the metadata server would have said; without them libtpu warns in
    # several lines that it could not ask.
    os.environ['TPU_ACCELERATOR_TYPE'] = accelerator.name
    os.environ['TPU_WORKER_HOSTNAMES'] = 'localhost'
  jax.config.update('jax_platforms', 'cpu')
  return accelerator


def gpu_spec_path(chip: accelerators.Chip) -> str:
  """The path of XLA's target config of the GPU `chip`."""
  return os.path.join(os.path.dirname(__file__), 'gpu_specs', chip.spec_file)


def devices(accelerator: accelerators.Accelerator) -> list[jax.Device]:
  """Compile-only devices of the accelerator, one per chip, of every host."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    if accelerator.platform == 'tpu':
      topology = topologies.get_topology_desc(
          platform='tpu', topology_name=accelerator.topology,
          chip_config_name=accelerator.chip.chip_config,
          chips_per_host_bounds=accelerator.host_bounds, num_slices=1)
    else:
      with open(gpu_spec_path(accelerator.chip)) as f:
        spec = f.read()
      topology = topologies.get_topology_desc(
          platform='cuda', topology=accelerator.topology, target_config=spec)
  except jax.errors.JaxRuntimeError as e:
    raise UserError(f'{COMPILERS[accelerator.platform].name} could not describe '
                    f'{accelerator.name} ({accelerator.topology}): '
                    f'{str(e).splitlines()[0]}') from e
  return list(topology.devices)
