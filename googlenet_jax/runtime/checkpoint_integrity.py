"""What keeps checkpoints honest: checksums, free space, damaged steps, Orbax's noise.

Orbax stores no checksum, so a flipped bit would load silently: each step's meta
records CRC32s of the state's arrays and of its weights, checked when read. A
save first checks the disk has room, a read that fails marks the step
`Damaged` so that the newest readable one is used, and a step is checked to
fit the run before it is read. A failed read or write leaves Orbax's and
TensorStore's threads reporting it once each; the filters here leave the run's
one line.
"""

import errno
import gc
import logging as std_logging
import os
import re
import shutil
import sys
import time
import traceback
import zlib
from typing import Any, Callable

from absl import logging
from etils import epath
from flax import serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from googlenet_jax.errors import UserError
from googlenet_jax.runtime import config_fields
from googlenet_jax.runtime import workdirs

CHECKSUM = 'state_crc32'  # Of the whole state, checked by a resume.
WEIGHTS_CHECKSUM = 'weights_crc32'  # Of the weights alone, checked by eval and predict.


def missing_space(directory, state: Any) -> str | None:
  """Why a local `directory` lacks room for `state` (its arrays' bytes, + 1 MiB), or None.

  Checked before Orbax writes: a write that fails part-way fails in Orbax's
  threads, which print a traceback each, and leaves a temporary directory.
  A bucket's space is not asked.
  """
  if workdirs.is_url(directory):
    return None
  needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state)) + 2**20
  free = shutil.disk_usage(directory).free
  if free >= needed:
    return None
  return (f'{os.strerror(errno.ENOSPC)}: it needs {needed / 2**20:.0f} MiB, '
          f'{free / 2**20:.0f} MiB are free')


def storage_error(e: Exception) -> str | None:
  """The OS's words for a failed read or write (TensorStore's too), else None."""
  if isinstance(e, OSError):
    return e.strerror or str(e)
  if code := re.search(r"os_error_code='(\d+)'", str(e)):
    return os.strerror(int(code.group(1)))
  if status := re.match(r'(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|'
                        r'DEADLINE_EXCEEDED|UNAUTHENTICATED): ', str(e)):
    return status.group(1)
  return None


def checksum(state: Any) -> int:
  """CRC32 of the state's arrays in tree order, integers as int64.

  A step saved as an int32 array may restore as a Python int.
  """
  crc = 0
  for leaf in jax.tree.leaves(state):
    leaf = np.asarray(leaf)
    if leaf.dtype.kind in 'iub':
      leaf = leaf.astype(np.int64)
    crc = zlib.crc32(np.ascontiguousarray(leaf).tobytes(), crc)
  return crc


class Damaged(Exception):
  """A step that cannot be read; its message is the reason."""


def read_item(step_dir: epath.Path, read: Callable[[], Any]) -> Any:
  """`read()` of a file of the step in `step_dir`.

  Raises:
    Damaged: its files cannot be read.
    UserError: this process may not read them (not damage: nothing is skipped).
  """
  try:
    return read()
  except Exception as e:  # Orbax and TensorStore raise many types for bad files.
    reason = short_reason(e)
    denied = isinstance(innermost(e), PermissionError) or 'PERMISSION_DENIED' in reason
  collect_unfinished_reads()
  if denied:
    raise UserError(f'Cannot read the checkpoint at step {step_dir.name} in '
                    f'{step_dir.parent} ({reason}): give this user read access, or run '
                    'as its owner.')
  raise Damaged(reason)


def collect_unfinished_reads() -> None:
  """Collects a failed restore's other reads without printing their tracebacks.

  Orbax raises the first array's error; the others' futures and coroutines
  report theirs when collected ("Future exception was never retrieved",
  "Exception ignored in: <coroutine ...>"), a traceback each: that happens
  here, with those reports dropped.
  """
  asyncio_log = std_logging.getLogger('asyncio')
  level, hook = asyncio_log.level, sys.unraisablehook
  asyncio_log.setLevel(std_logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  try:
    gc.collect()
  finally:
    asyncio_log.setLevel(level)
    sys.unraisablehook = hook


def innermost(e: BaseException) -> BaseException:
  """The exception at the root of `e`'s causes."""
  while e.__cause__ or e.__context__:
    e = e.__cause__ or e.__context__
  return e


def short_reason(e: BaseException) -> str:
  """The first line of the innermost cause: TensorStore's words, not Orbax's spec dump."""
  e = innermost(e)
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return (lines[0] if lines else type(e).__name__)[:300]


def check_meta(saved: dict[str, Any], current: dict[str, Any], step: int,
               directory, resume: bool) -> None:
  """Raises UserError naming each field this run cannot change.

  A resume keeps every field that the train state or the data order depends
  on; eval and predict, the network's. Fields the checkpoint does not record
  (it predates them) are not checked.
  """
  fixed = config_fields.FIXED_BY_CHECKPOINT if resume else config_fields.NETWORK
  changed = [f for f in current if f in saved and saved[f] != current[f]]
  refused = [f for f in changed if f in fixed]
  if refused:
    raise UserError(
        '; '.join(f'config.{f} is {current[f]!r}' for f in refused)
        + f', but the checkpoint at step {step} in {directory} was written with '
        + ', '.join(f'{f}={saved[f]!r}' for f in refused)
        + ': run with ' + ' '.join(f'--config.{f}={saved[f]}' for f in refused)
        + (', or train with the new value' + ('s' if len(refused) > 1 else '')
           + ' in another --workdir.' if resume else ', or without the flag.'))


def leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Each array's shape by its path, every key a string: Orbax's metadata names a
  tuple's entries by number, flax's state dicts by string."""
  def name(key) -> str:
    return str(getattr(key, 'key', getattr(key, 'idx', getattr(key, 'name', key))))
  return {tuple(map(name, path)): tuple(getattr(leaf, 'shape', np.shape(leaf)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_structure(step_dir: epath.Path, target: Any, resume: bool) -> None:
  """Raises UserError if the step holds other arrays than `target` (a changed
  optimizer in a checkpoint whose meta predates it); Damaged if unreadable.

  Only the state's parts that `target` has are compared, unless resuming.
  """
  try:
    saved = ocp.StandardCheckpointHandler().metadata(step_dir / 'state')
  except Exception as e:  # pylint: disable=broad-except
    raise Damaged(short_reason(e)) from e
  target = serialization.to_state_dict(target)
  saved_shapes, target_shapes = leaf_shapes(saved), leaf_shapes(target)
  if not resume:
    saved_shapes = {k: v for k, v in saved_shapes.items() if k[0] in target}
  if saved_shapes != target_shapes:
    differ = sorted(saved_shapes.keys() ^ target_shapes.keys()) or sorted(
        k for k in saved_shapes if saved_shapes[k] != target_shapes[k])
    example = ''.join(f'[{key!r}]' for key in differ[0])
    raise UserError(
        f'The checkpoint at step {step_dir.name} in {step_dir.parent} holds another '
        f'train state than this config makes (e.g. {example}): its model or optimizer '
        '(momentum, nesterov, weight_decay, schedule) differs. Run with the settings '
        'that wrote it, or train in another --workdir.')


def report_damaged(directory: epath.Path, damaged: list[tuple[int, str]],
                   step: int, resume: bool) -> None:
  """Warns which steps were skipped; a resume moves them aside (process 0).

  A training's manager must then `reload()` to list the steps left.
  """
  for bad_step, reason in damaged:
    where = directory / str(bad_step)
    if resume and jax.process_index() == 0:
      moved = where.parent / f'{bad_step}.damaged-{time.strftime("%Y%m%dT%H%M%S")}'
      where.rename(moved)
      where = moved
    logging.warning('The checkpoint at step %d cannot be read (%s): %s step %d '
                    'instead; it is kept as %s.', bad_step, reason,
                    'resuming from' if resume else 'using', step, where)
  if resume and jax.process_count() > 1:  # Every process lists the steps after the move.
    multihost_utils.sync_global_devices('checkpoint: damaged steps moved aside')


def keep_only_orbax_warnings(record) -> bool:
  """Orbax logs each stage of every save at INFO; only its warnings are news.

  They keep their one line, not a traceback: a failed write's is logged by each
  of Orbax's threads, and the run reports the failure as one Error line.
  """
  if '/orbax/' not in record.pathname:
    return True
  record.exc_info = record.exc_text = None
  return record.levelno >= std_logging.WARNING


def drop_orbax_leftover_reports(unraisable) -> None:
  """sys.unraisablehook without the tracebacks of a failed Orbax read's or write's rest.

  When one array of a restore or save fails (a damaged checkpoint, a full disk),
  Orbax's other reads are dropped and TensorStore's callbacks finish into the
  event loop Orbax has closed, a traceback each; the run has already said what
  failed, in one line.
  """
  stack = ''.join(traceback.format_tb(unraisable.exc_traceback))
  closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                 and str(unraisable.exc_value) == 'Event loop is closed')
  if not (closed_loop or '/orbax/checkpoint/' in stack):
    sys.__unraisablehook__(unraisable)


def quiet_orbax() -> None:
  """Leaves Orbax's warnings and the run's own error lines; call once, at the start."""
  logging.get_absl_handler().addFilter(keep_only_orbax_warnings)
  sys.unraisablehook = drop_orbax_leftover_reports
