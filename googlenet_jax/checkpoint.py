"""Orbax checkpoints of the (unreplicated) train state, and what a resume must match.

Checkpoints hold host-side arrays and no device layout, so a state saved on eight
devices restores on one, and the reverse. Orbax writes each step into a temporary
directory and renames it when complete, so a half-written step is never loaded;
a training's manager removes such leftovers when it starts.

Saves are synchronous: a full disk stops the run at the save that met it, not
in a background thread an epoch later. Each step's meta records the config
(`config_fields.record`) and CRC32s of the state's arrays and of its weights
(Orbax stores none, so a flipped bit would load silently). A step that cannot
be read is skipped for the newest readable one. Eval and predict read only the
weights: parameters and BatchNorm statistics, not the optimizer state.
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
from typing import Any, Callable, Sequence

from absl import logging
from etils import epath
from flax import serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from googlenet_jax import config_fields
from googlenet_jax import workdirs
from googlenet_jax.errors import UserError

CHECKSUM = 'state_crc32'  # Of the whole state, checked by a resume.
WEIGHTS_CHECKSUM = 'weights_crc32'  # Of `weights(state)`, checked by eval and predict.


def checkpoint_dir(directory: str, workdir: str) -> str:
  """Where checkpoints live: `directory` (config.checkpoint_dir), else WORKDIR/checkpoints.

  A local path is made absolute; a URL (gs://bucket/run) is kept as it is: Orbax
  writes there directly, marking a finished step with a commit file.
  """
  directory = directory or os.path.join(workdir, 'checkpoints')
  return directory if workdirs.is_url(directory) else os.path.abspath(directory)


def weights(state: Any) -> dict[str, Any]:
  """What inference needs of a train state (or of its state dict)."""
  get = state.get if isinstance(state, dict) else lambda name: getattr(state, name)
  return {'params': get('params'), 'batch_stats': get('batch_stats')}


def create_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A training's manager, which keeps the last `max_to_keep` steps in `directory`.

  It removes the temporary directories of saves that never finished (a kill or
  a full disk mid-save); only one may use `directory` at a time, which the
  training's workdir lock ensures. Eval and predict read steps without one.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=False)
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
        meta=ocp.args.JsonSave({**meta, CHECKSUM: checksum(state),
                                WEIGHTS_CHECKSUM: checksum(weights(state))})))
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


def find_steps(path: str) -> tuple[epath.Path, list[int]]:
  """The checkpoints at `path`, for eval and predict.

  `path`, local or a URL, is a checkpoints directory (its finished steps), one
  step's directory in it (that step, finished or copied by hand), or a
  training's workdir (its checkpoints/).

  Returns:
    The directory of the steps, and the step numbers.

  Raises:
    UserError: `path` holds no checkpoint; the line says what it holds.
  """
  path = epath.Path(path if workdirs.is_url(path) else os.path.abspath(path))
  if path.name.isdigit() and (path / 'state').exists():
    return path.parent, [int(path.name)]
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  steps = ocp.path.step.checkpoint_steps(path) if path.is_dir() else []
  if not steps:
    raise UserError(f'No checkpoint in {path}: {describe_contents(path)}. Train first, '
                    'or give --checkpoint a checkpoints directory, one step\'s '
                    'directory in it or a workdir that holds one.')
  return path, steps


def describe_contents(path: epath.Path) -> str:
  """What a directory without checkpoints holds, in a few words."""
  if not path.exists():
    return 'it does not exist'
  if not path.is_dir():
    return 'it is a file'
  names = sorted(child.name for child in path.iterdir())
  if not names:
    return 'it is empty'
  shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
  return f'it holds {shown}, and no finished step'


def restore(directory: str | epath.Path, steps: Sequence[int], target: Any,
            meta: dict[str, Any], resume: bool = False) -> tuple[int, Any]:
  """Restores the newest readable of `steps` into the structure of `target`.

  Steps that cannot be read (a damaged file, a wrong checksum) are skipped with
  a warning. A resuming training moves them aside, to STEP.damaged-TIME, so that
  its own save of that step number cannot overwrite them.

  Args:
    directory: the checkpoints directory.
    steps: the steps in it to try, the newest first.
    target: the abstract state to restore into: for a resume, the train state;
      else `weights` of it, which are all that is read.
    meta: this run's `meta`.
    resume: a training continues from the step: its optimizer, batch size and
      seed must match too, and changed fields that can continue are logged.

  Returns:
    The step restored, and its state.

  Raises:
    UserError: there is no checkpoint or none can be read, or this config
      cannot continue from it (a field of `meta` differs).
  """
  directory = epath.Path(directory)
  if not steps:
    raise UserError(f'No checkpoint in {directory}: train first, or give --checkpoint '
                    'for eval or predict.')
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      state = restore_step(directory, step, target, meta, resume)
    except Damaged as e:
      damaged.append((step, str(e)))
      continue
    if damaged:
      report_damaged(directory, damaged, step, resume)
    return step, state
  raise UserError(
      f'No checkpoint in {directory} can be read (steps '
      f'{", ".join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: '
      f'{damaged[0][1]}). They are kept as they are; train in another --workdir '
      'to start afresh.')


def restore_step(directory: epath.Path, step: int, target: Any,
                 meta: dict[str, Any], resume: bool) -> Any:
  """The state of `step`, checked against `meta`, `target` and its checksum.

  A resume logs each changed field that it can continue with.

  Raises:
    Damaged: a file of the step cannot be read, or the checksum differs.
    UserError: this config cannot continue from the step.
  """
  step_dir = directory / str(step)
  saved_meta = read_meta(step_dir)
  check_meta(saved_meta, meta, step, directory, resume)
  check_structure(step_dir, target, resume)
  state = read_item(step_dir, lambda: read_state(step_dir, target, partial=not resume))
  checked = (CHECKSUM, state) if resume else (WEIGHTS_CHECKSUM, weights(state))
  if checked[0] in saved_meta and checksum(checked[1]) != saved_meta[checked[0]]:
    raise Damaged('its arrays do not match their checksum')
  if resume:
    for f in config_fields.CHANGEABLE_ON_RESUME:
      if f in saved_meta and f in meta and saved_meta[f] != meta[f]:
        logging.warning('Resuming from step %d with config.%s=%r (it was written '
                        'with %r).', step, f, meta[f], saved_meta[f])
  return state


def read_meta(step_dir: epath.Path) -> dict[str, Any]:
  """The config record of the step in `step_dir`.

  Raises:
    Damaged, UserError: as `read_item`.
  """
  return read_item(step_dir, lambda: ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      step_dir / 'meta'))


def newest_record(directory: epath.Path, steps: Sequence[int]) -> dict[str, Any]:
  """The config record of the newest of `steps` that has a readable one, else {}."""
  for step in sorted(steps, reverse=True):
    try:
      return read_meta(directory / str(step))
    except Damaged:
      continue
  return {}


def read_state(step_dir: epath.Path, target: Any, partial: bool) -> Any:
  """The step's state in the structure of `target`; `partial` reads only its parts."""
  return ocp.PyTreeCheckpointer().restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=partial))


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
