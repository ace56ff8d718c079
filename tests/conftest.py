"""Every test process sees 8 CPU devices, as a TPU host would.

Compiled programs are cached on disk for the session (config.compilation_cache_dir),
so the same GoogLeNet step compiles once even when several tests and their
main.py subprocesses build it.
"""

import os
import runpy
import subprocess
import sys
import tempfile
import uuid

import chex
import numpy as np
import pytest

from fake_data import write_dataset
from gcs_server import GcsServer
from googlenet_jax import experiment
from googlenet_jax import train
from googlenet_jax.runtime import compilation_cache

chex.set_n_cpu_devices(8)
# One cache for the session: pytest-xdist's workers inherit the variable from
# the process that starts them, which sets it first.
COMPILATION_CACHE_DIR = os.environ.setdefault(
    'GOOGLENET_JAX_TEST_CACHE', tempfile.mkdtemp(prefix='googlenet_jax_test_cache_'))
compilation_cache.enable(COMPILATION_CACHE_DIR)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32  # The smallest size at which the chapter's network still works.


@pytest.fixture(scope='session')
def config(tmp_path_factory):
  """The chapter's config on 50/23 generated examples, 32x32, batches of 16.

  The network is the chapter's with its first Inception block only
  (googlenet_1block): what these tests check (checkpoints, hosts, faults, the
  loop) does not depend on the depth, and its train step compiles in a quarter
  of the time. Tests of the network itself take the chapter's GoogLeNet.
  """
  source_dir = tmp_path_factory.mktemp('idx')
  write_dataset(source_dir)
  config = runpy.run_path(os.path.join(REPO, 'configs/fmnist96.py'))['get_config']()
  config.source_dir = str(source_dir)
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.verify_checksums = False
  config.image_size = IMAGE_SIZE
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.learning_rate = 0.05
  config.model = 'googlenet_1block'
  # lax.conv, the form of GPUs and TPUs; tests of the CPU's matmul form choose it.
  config.conv_lowering = 'xla'
  config.compilation_cache_dir = COMPILATION_CACHE_DIR
  return config


def config_flags(config) -> list[str]:
  """`config` as main.py overrides of configs/fmnist96.py (later flags win)."""
  return [f'--config.{field}={value}' for field, value in config.items()
          if value is not None and not isinstance(value, (dict, list, tuple))]


def start_main(workdir, config, *args, num_devices=8, tpu_vm_env=None,
               xla_flags='') -> subprocess.Popen:
  """Starts main.py with `config` in a fresh process that sees `num_devices` CPUs.

  With `config` None, main.py gets no --config flag: only `args`. With
  `tpu_vm_env` (cloud_tpu_vm.TpuVmHost.environ), it runs as that host of a Cloud TPU
  VM, through tests/cloud_tpu_vm.py. `xla_flags` are more XLA_FLAGS.
  """
  env = dict(os.environ, **(tpu_vm_env or {}),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices} {xla_flags}')
  config_args = [] if config is None else ['--config=configs/fmnist96.py',
                                           *config_flags(config)]
  program = 'tests/cloud_tpu_vm.py' if tpu_vm_env else 'main.py'
  return subprocess.Popen(
      [sys.executable, program, f'--workdir={workdir}', *config_args, *args],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_main(workdir, config, *args, **kwargs) -> subprocess.CompletedProcess:
  """Runs main.py to the end; see start_main."""
  process = start_main(workdir, config, *args, **kwargs)
  stdout, stderr = process.communicate(timeout=300)
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# Test inputs come from NumPy: on a CPU, XLA takes about 1.3 s to compile each
# jax.random draw of a new shape.
def normal(shape, seed: int) -> np.ndarray:
  """float32 draws from the standard normal distribution."""
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def uniform(shape, seed: int) -> np.ndarray:
  """float32 draws from [0, 1)."""
  return np.random.default_rng(seed).random(shape, np.float32)


@pytest.fixture(scope='session')
def trained(config, tmp_path_factory):
  """One 2-epoch run of `config` on 8 devices, shared by the tests that only read it.

  Returns its workdir and final (replicated) state; copy the workdir to change it.
  """
  workdir = str(tmp_path_factory.mktemp('trained'))
  return workdir, train.train_and_evaluate(experiment.build(config), workdir)


@pytest.fixture(scope='session')
def gcs():
  """A GCS server on 127.0.0.1 that this process and its subprocesses reach as gs://."""
  server = GcsServer()
  saved = dict(os.environ)
  os.environ.update(server.environ())
  yield server
  os.environ.clear()
  os.environ.update(saved)
  server.stop()


@pytest.fixture
def bucket(gcs) -> str:
  """A new, empty bucket on the `gcs` server: 'gs://NAME'."""
  return gcs.create_bucket(f'bucket-{uuid.uuid4().hex[:12]}')
