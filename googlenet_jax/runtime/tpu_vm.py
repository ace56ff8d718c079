"""A Cloud TPU VM's chips, which one process at a time may use.

libtpu gives a VM's chips to one process: it takes a POSIX lock on
/tmp/libtpu_lockfile and holds it until that process ends. The kernel drops the
lock however the process ends, so a crashed or killed run leaves nothing to
clean up. A second JAX process on the VM (eval or predict while a training
runs, a relaunch while the old run still lives) cannot start JAX's TPU backend:
libtpu refuses ("The TPU is already in use by process with pid N", jax#22070)
and JAX 0.10, which on a TPU VM asks for the TPU explicitly, raises it as a
traceback. `run_beside_the_chips_holder` looks at the lock first, as libtpu
does, and decides what the second process does instead.
"""

import fcntl
import os
import struct

from absl import logging
import jax

from googlenet_jax.errors import UserError
from googlenet_jax.runtime import jax_internals

# libtpu's own, fixed path (libtpu 0.0.42.1 has no setting for it). The tests'
# simulated hosts each set their own, as each VM has its own /tmp.
LIBTPU_LOCK_FILE = '/tmp/libtpu_lockfile'
# Linux's struct flock (64-bit off_t): type, whence, start, length, pid.
FLOCK = struct.Struct('hhqqi')


def chips_holder(lock_file: str) -> int | None:
  """The pid of the live process that holds libtpu's `lock_file`, or None.

  Asks the kernel which process holds the POSIX lock libtpu takes (F_GETLK),
  without taking it. Call it before JAX's TPU backend starts in this process:
  closing a descriptor of the file drops any lock this process holds on it.
  """
  try:
    fd = os.open(lock_file, os.O_RDONLY)
  except FileNotFoundError:  # No process has used the chips since the VM booted.
    return None
  try:
    query = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # The whole file.
    lock_type, _, _, _, pid = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
  finally:
    os.close(fd)
  return None if lock_type == fcntl.F_UNLCK else pid


def describe_process(pid: int) -> str:
  """'process N (its command line)', the command line as far as /proc shows it."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      command = ' '.join(f.read().decode(errors='replace').replace('\0', ' ').split())
  except OSError:  # Gone meanwhile, or not ours to read.
    command = ''
  return f'process {pid}' + (f' ({command[:200]})' if command else '')


def run_beside_the_chips_holder(mode: str) -> bool:
  """What `mode` does on a TPU VM whose chips another process holds.

  A training stops: it needs the chips, and the holder is usually the
  training it would resume. Every other mode (eval, predict, summary,
  compare) runs on this host's CPUs, alone, and says so in one warning: eval
  reads only the weights, the holder goes on undisturbed, and it joins none
  of the holder's hosts. Call this before JAX starts a backend.

  Returns:
    Whether this process now runs alone on the CPUs (then it joins no process).

  Raises:
    UserError: `mode` is 'train' and another process holds the chips.
  """
  if not jax_internals.on_cloud_tpu_vm():
    return False
  pid = chips_holder(LIBTPU_LOCK_FILE)
  if pid is None:
    return False
  holder = describe_process(pid)
  if mode == 'train':
    raise UserError(
        f'The TPU chips of this VM are in use by {holder}: a training needs them. Let '
        f'it finish, or stop it (kill {pid}: a training saves a checkpoint and '
        'stops), then run this command again.')
  logging.warning("The TPU chips of this VM are in use by %s: --mode=%s runs on this "
                  "host's CPUs instead, alone (slower than on the chips).", holder, mode)
  jax.config.update('jax_platforms', 'cpu')
  return True
