"""On a Cloud TPU VM: chips that another process holds, through JAX's own TPU-VM code.

tests/cloud_tpu_vm.py stands in for the VM's metadata server and its chips; a test
process holds the simulated host's libtpu lock file as libtpu holds it.
"""

import contextlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cloud_tpu_vm
from conftest import run_main, start_main
from fake_data import NUM_TEST, NUM_TRAIN
from gcs_server import free_port
from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax.runtime import tpu_vm

# What libtpu does with its lock file while a process uses the chips: a POSIX
# write lock on the whole file, held until the process ends.
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print('held', flush=True)
time.sleep(600)
"""


@pytest.fixture
def vm(tmp_path):
  """One simulated TPU VM: its metadata server (a one-host slice) and its /tmp."""
  host, = cloud_tpu_vm.slice_of_hosts(1, tmp_path)
  yield host
  host.stop()


@contextlib.contextmanager
def process_holding(lock_file: str):
  """A process that holds `lock_file` as libtpu does; yields its pid."""
  holder = subprocess.Popen([sys.executable, '-c', HOLD, lock_file],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    yield holder.pid
  finally:
    holder.kill()
    holder.wait()


def test_the_chips_holder_is_the_process_that_holds_libtpus_lock(tmp_path):
  lock_file = str(tmp_path / 'libtpu_lockfile')
  assert tpu_vm.chips_holder(lock_file) is None  # No process has used the chips.
  with process_holding(lock_file) as pid:
    assert tpu_vm.chips_holder(lock_file) == pid
  assert tpu_vm.chips_holder(lock_file) is None  # The kernel drops a dead process's lock.


def test_a_training_on_a_vm_whose_chips_are_held_stops_in_one_line(config, vm, tmp_path):
  with process_holding(vm.lock_file) as pid:
    training = start_main(tmp_path / 'run', config, num_devices=1,
                          tpu_vm_env=vm.environ(free_port()))
    _, stderr = training.communicate(timeout=120)
  assert training.returncode == 1, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith('Error:')]
  assert len(errors) == 1, stderr[-3000:]
  # The holder named by its pid and its command line (cut at 200 characters).
  assert re.fullmatch(
      re.escape(f'Error: The TPU chips of this VM are in use by process {pid} '
                f'({sys.executable} -c import fcntl, os, sys, time') + '.*' +
      re.escape(f'): a training needs them. Let it finish, or stop it (kill {pid}: a '
                'training saves a checkpoint and stops), then run this command again.'),
      errors[0]), errors[0]
  assert not (tmp_path / 'run').exists()
  assert vm.metadata.requests == []  # It tried to join no host, on no port.


@pytest.mark.xdist_group('trained')  # One worker runs the shared run.
def test_eval_beside_the_chips_holder_runs_on_the_cpu_and_restores_8_devices_on_1(
    config, trained, vm, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(trained[0], workdir)
  on_8 = evaluate.evaluate_checkpoint(experiment.build_inference(config, str(workdir)),
                                      str(workdir))
  # Eval while a training holds the chips: on 1 CPU device, with one warning.
  with process_holding(vm.lock_file) as pid:
    result = run_main(workdir, config, '--mode=eval', num_devices=1,
                      tpu_vm_env=vm.environ(free_port()))
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [line for line in result.stderr.splitlines() if 'TPU chips' in line]
  assert len(warnings) == 1 and warnings[0].startswith('W'), result.stderr[-3000:]
  assert re.search(
      re.escape(f'] The TPU chips of this VM are in use by process {pid} '
                f'({sys.executable} -c import fcntl') + '.*' +
      re.escape("): --mode=eval runs on this host's CPUs instead, alone (slower than "
                'on the chips).') + '$', warnings[0]), warnings[0]
  assert vm.metadata.requests == []  # It joined none of the holder's hosts.
  with open(workdir / 'eval.json') as f:
    on_1 = json.load(f)
  assert on_1['num_examples'] == on_8['num_examples'] == NUM_TEST
  assert on_1['step'] == on_8['step'] == 2 * (NUM_TRAIN // config.batch_size)
  assert on_1['accuracy'] == on_8['accuracy']
  np.testing.assert_allclose(on_1['loss'], on_8['loss'], rtol=1e-5)


def test_a_tpu_backend_that_cannot_start_is_one_line(config, vm, tmp_path):
  # The chips not stood in: JAX asks libtpu for them, as on a VM whose TPU
  # cannot start (here there is none), and JAX 0.10 raises.
  environ = vm.environ(free_port())
  del environ['JAX_PLATFORMS']
  result = run_main(tmp_path, config, '--mode=summary', num_devices=1,
                    tpu_vm_env=environ)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(
      "Error: JAX could not start its devices: Unable to initialize backend 'tpu': "), errors[0]

