"""The workdir: a local path or a gs:// URL, created and checked, locked while training.

One training per workdir: an OS lock on WORKDIR/train.lock, held for the run.
The kernel releases the lock when its process ends, however it ends (SIGKILL,
a crash; a reboot clears it), so a stale lock never blocks a restart. The file
also holds the holder's pid and host, for the message a second training prints.
Eval and predict read a workdir and take no lock.

flock needs a local (or NFS) file system: a URL workdir (gs://) is not locked,
with a warning. Of a run of several processes, only process 0 takes the lock.
"""

import contextlib
import fcntl
import os
import socket
import time
from typing import Iterator
import uuid

from absl import logging
from etils import epath

from googlenet_jax.errors import UserError

LOCK_FILE = 'train.lock'


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL such as gs://bucket/run rather than a local path."""
  return '://' in str(path)


def create(workdir: str) -> None:
  """Creates `workdir`, a local path or a gs:// URL.

  Raises:
    UserError: before any work is done, if it cannot be written.
  """
  path = epath.Path(workdir)
  probe = path / f'.write_test_{uuid.uuid4().hex}'  # One per host and process.
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:  # gcsfs: FileNotFoundError for a bucket that does not exist.
    raise UserError(f'Cannot write to the workdir {workdir} '
                    f'({e.strerror or f"{type(e).__name__}: {e}"}): '
                    'choose another --workdir.') from e


@contextlib.contextmanager
def lock(workdir: str, active: bool = True) -> Iterator[None]:
  """Holds `workdir`'s training lock for the body of the `with`.

  Args:
    workdir: an existing workdir.
    active: False for every process but the first of a multi-process run.

  Raises:
    UserError: at once, if another live process holds the lock.
  """
  if not active:
    yield
    return
  if is_url(workdir):
    logging.warning('The workdir %s is not on a local file system, so it cannot be '
                    'locked: make sure no other training uses it.', workdir)
    yield
    return
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 1000, 0).decode(errors='replace').strip()
      raise UserError(f'The workdir {workdir} is in use by another training '
                      f'({holder or "a process that is starting"}): wait for it '
                      'to end or stop it, or choose another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f'pid {os.getpid()} on host {socket.gethostname()}, since '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}\n').encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.
