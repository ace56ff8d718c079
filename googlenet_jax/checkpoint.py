"""Orbax checkpoints of the (unreplicated) train state, and what a resume must match.

Checkpoints hold host-side arrays and no device layout, so a state saved on eight
devices restores on one, and the reverse. Orbax writes each step into a temporary
directory and renames it when complete, so a half-written step is never loaded;
a training's manager removes such leftovers when it starts.

Saves are synchronous: a full disk stops the run at the save that met it, not
in a background thread an epoch later. Each step's meta records the config
fields that shape the state or the data order, and a CRC32 of the state's
arrays (Orbax stores none, so a flipped bit would load silently). A step that
cannot be read is skipped for the newest readable one.
"""

import errno
import gc
import logging as std_logging
import os
import re
import shutil
import sys
import time
import zlib
from typing import Any

from absl import logging
from etils import epath
from flax import serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from googlenet_jax import workdirs
from googlenet_jax.errors import UserError

# Fields a restored state's arrays and optimizer state depend on: a run that
# changes one cannot continue from, or evaluate, the checkpoint.
STATE_FIELDS = ('model', 'num_classes', 'image_size', 'momentum', 'nesterov',
                'weight_decay', 'schedule')
# Fields that place a step in the data (which examples, in which order): a
# resume that changes one would continue another run.
DATA_ORDER_FIELDS = ('batch_size', 'seed')
# Fields a resume may change, e.g. to train longer; the change is logged.
CHANGEABLE_FIELDS = ('num_epochs', 'num_train_steps', 'learning_rate', 'warmup_epochs',
                     'label_smoothing', 'augment_crop_padding', 'augment_flip',
                     'augment_erase_probability')
CHECKSUM = 'state_crc32'


def checkpoint_dir(config, workdir: str) -> str:
  """Where checkpoints live: `config.checkpoint_dir`, else WORKDIR/checkpoints.

  A local path is made absolute; a URL (gs://bucket/run) is kept as it is: Orbax
  writes there directly, marking a finished step with a commit file.
  """
  directory = config.checkpoint_dir or os.path.join(workdir, 'checkpoints')
  return directory if workdirs.is_url(directory) else os.path.abspath(directory)


def meta(config) -> dict[str, Any]:
  """The config fields a checkpoint records, to check a resume or evaluation against."""
  return {field: config[field]
          for field in STATE_FIELDS + DATA_ORDER_FIELDS + CHANGEABLE_FIELDS}


def create_manager(directory: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager that keeps the last `max_to_keep` steps in `directory`.

  A writing manager removes the temporary directories of saves that never
  finished (a kill or a full disk mid-save); only one may use `directory` at
  a time, which the training's workdir lock ensures.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, state: Any, meta: dict[str, Any]) -> None:
  """Saves the host `state` at `state.step` with JSON `meta` and the state's checksum.

  Raises:
    UserError: the file system refused the write (full, read-only, no
      permission); the earlier steps are kept as they were.
  """
  step = int(state.step)
  def refused(reason: str) -> UserError:
    return UserError(f'Cannot save the checkpoint of step {step} in {manager.directory} '
                     f'({reason}): stopped. {last_good_checkpoint(manager)}')
  if shortfall := missing_space(manager.directory, state):
    raise refused(shortfall)
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**meta, CHECKSUM: checksum(state)})))
  except (OSError, ValueError) as e:
    reason = storage_error(e)
    if reason is None:
      raise
    raise refused(reason) from e


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


def last_good_checkpoint(manager: ocp.CheckpointManager) -> str:
  """A sentence naming the newest finished step on disk, for error messages."""
  try:
    manager.reload()
    step = manager.latest_step()
  except Exception:  # pylint: disable=broad-except  # The listing failed too.
    return f'The checkpoints in {manager.directory} could not be listed.'
  if step is None:
    return f'No checkpoint was saved in {manager.directory}.'
  return (f'The last good checkpoint is step {step} in {manager.directory}; free '
          'space (or fix the directory) and run the same command to resume from it.')


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


def restore(manager: ocp.CheckpointManager, target: Any, meta: dict[str, Any],
            resume: bool = False) -> Any:
  """Restores the newest readable step into the structure of `target`.

  Steps that cannot be read (a damaged file, a wrong checksum) are skipped with
  a warning. A resuming training moves them aside, to STEP.damaged-TIME, so that
  its own save of that step number cannot overwrite them.

  Args:
    manager: the checkpoints.
    target: the abstract state to restore into.
    meta: this run's `meta`.
    resume: a training continues from the step: its batch size and seed must
      match too, and changed fields that can continue are logged.

  Raises:
    UserError: there is no checkpoint or none can be read, or this config
      cannot continue from it (a field of `meta` differs).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise UserError(f'No checkpoint in {manager.directory}: train first, or set '
                    '--config.checkpoint_dir to a directory that holds one.')
  damaged = []
  for step in steps:
    try:
      state = restore_step(manager, step, target, meta, resume)
    except Damaged as e:
      damaged.append((step, str(e)))
      continue
    if damaged:
      report_damaged(manager, damaged, step, resume)
    return state
  raise UserError(
      f'No checkpoint in {manager.directory} can be read (steps '
      f'{", ".join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: '
      f'{damaged[0][1]}). They are kept as they are; train in another --workdir '
      'to start afresh.')


def restore_step(manager: ocp.CheckpointManager, step: int, target: Any,
                 meta: dict[str, Any], resume: bool) -> Any:
  """The state of `step`, checked against `meta`, `target` and its checksum.

  A resume logs each changed field that it can continue with.

  Raises:
    Damaged: a file of the step cannot be read, or the checksum differs.
    UserError: this config cannot continue from the step.
  """
  saved_meta = read_item(manager, step, meta=ocp.args.JsonRestore())['meta']
  check_meta(saved_meta, meta, step, manager.directory, resume)
  check_structure(manager, step, target)
  state = read_item(manager, step, state=ocp.args.StandardRestore(target))['state']
  if CHECKSUM in saved_meta and checksum(state) != saved_meta[CHECKSUM]:
    raise Damaged('its arrays do not match their checksum')
  if resume:
    for f in CHANGEABLE_FIELDS:
      if f in saved_meta and f in meta and saved_meta[f] != meta[f]:
        logging.warning('Resuming from step %d with config.%s=%r (it was written '
                        'with %r).', step, f, meta[f], saved_meta[f])
  return state


def read_item(manager: ocp.CheckpointManager, step: int, **items) -> Any:
  """Restores `items` of `step`.

  Raises:
    Damaged: its files cannot be read.
    UserError: this process may not read them (not damage: nothing is skipped).
  """
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # Orbax and TensorStore raise many types for bad files.
    reason = short_reason(e)
    denied = isinstance(innermost(e), PermissionError) or 'PERMISSION_DENIED' in reason
  collect_unfinished_reads()
  if denied:
    raise UserError(f'Cannot read the checkpoint at step {step} in {manager.directory} '
                    f'({reason}): give this user read access, or run as its owner.')
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

  Fields the checkpoint does not record (it predates them) are not checked.
  """
  fixed = STATE_FIELDS + (DATA_ORDER_FIELDS if resume else ())
  changed = [f for f in current if f in saved and saved[f] != current[f]]
  refused = [f for f in changed if f in fixed]
  if refused:
    raise UserError(
        '; '.join(f'config.{f} is {current[f]!r}' for f in refused)
        + f', but the checkpoint at step {step} in {directory} was written with '
        + ', '.join(f'{f}={saved[f]!r}' for f in refused)
        + ': run with ' + ' '.join(f'--config.{f}={saved[f]}' for f in refused)
        + ', or train with the new value' + ('s' if len(refused) > 1 else '')
        + ' in another --workdir.')


def check_structure(manager: ocp.CheckpointManager, step: int, target: Any) -> None:
  """Raises UserError if `step` holds other arrays than `target` (a changed
  optimizer in a checkpoint whose meta predates it); Damaged if unreadable."""
  try:
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(manager.directory) / str(step) / 'state')
  except Exception as e:  # pylint: disable=broad-except
    raise Damaged(short_reason(e)) from e
  def shapes(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, 'shape', np.shape(leaf)))
            for path, leaf in leaves}
  saved_shapes, target_shapes = shapes(saved), shapes(serialization.to_state_dict(target))
  if saved_shapes != target_shapes:
    differ = sorted(saved_shapes.keys() ^ target_shapes.keys()) or sorted(
        k for k in saved_shapes if saved_shapes[k] != target_shapes[k])
    raise UserError(
        f'The checkpoint at step {step} in {manager.directory} holds another train '
        f'state than this config makes (e.g. {differ[0]}): its model or optimizer '
        '(momentum, nesterov, weight_decay, schedule) differs. Run with the '
        'settings that wrote it, or train in another --workdir.')


def report_damaged(manager: ocp.CheckpointManager, damaged: list[tuple[int, str]],
                   step: int, resume: bool) -> None:
  """Warns which steps were skipped; a resume moves them aside (process 0)."""
  for bad_step, reason in damaged:
    where = manager.directory / str(bad_step)
    if resume and jax.process_index() == 0:
      moved = where.parent / f'{bad_step}.damaged-{time.strftime("%Y%m%dT%H%M%S")}'
      where.rename(moved)
      where = moved
    logging.warning('The checkpoint at step %d cannot be read (%s): %s step %d '
                    'instead; it is kept as %s.', bad_step, reason,
                    'resuming from' if resume else 'using', step, where)
  if resume:
    if jax.process_count() > 1:  # Every process lists the steps after the move.
      multihost_utils.sync_global_devices('checkpoint: damaged steps moved aside')
    manager.reload()
