"""Orbax checkpoints of the (unreplicated) train state, and what a resume must match.

Checkpoints hold host-side arrays and no device layout, so a state saved on eight
devices restores on one, and the reverse. Orbax writes each step into a temporary
directory and renames it when complete, so a half-written step is never loaded;
a training's manager removes such leftovers when it starts.

Saves are synchronous: a full disk stops the run at the save that met it, not
in a background thread an epoch later. Each step's meta records the config
(`config_fields.record`) and the checksums of `checkpoint_integrity`; a step
that cannot be read is skipped for the newest readable one. Eval and predict
read only the weights: parameters and BatchNorm statistics, not the optimizer
state.
"""

import os
from typing import Any, Sequence

from absl import logging
from etils import epath
import orbax.checkpoint as ocp

from googlenet_jax.errors import UserError
from googlenet_jax.runtime import checkpoint_integrity as integrity
from googlenet_jax.runtime import config_fields
from googlenet_jax.runtime import workdirs


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
  """Saves the host `state` at `state.step` with JSON `meta` and the state's checksums.

  Raises:
    UserError: the file system refused the write (full, read-only, no
      permission); the earlier steps are kept as they were.
  """
  step = int(state.step)
  def refused(reason: str) -> UserError:
    return UserError(f'Cannot save the checkpoint of step {step} in {manager.directory} '
                     f'({reason}): stopped. {last_good_checkpoint(manager)}')
  if shortfall := integrity.missing_space(manager.directory, state):
    raise refused(shortfall)
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**meta, integrity.CHECKSUM: integrity.checksum(state),
                                integrity.WEIGHTS_CHECKSUM: integrity.checksum(weights(state))})))
  except (OSError, ValueError) as e:
    reason = integrity.storage_error(e)
    if reason is None:
      raise
    raise refused(reason) from e


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

  Steps that cannot be read (a damaged file, a wrong integrity.checksum) are skipped with
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
    except integrity.Damaged as e:
      damaged.append((step, str(e)))
      continue
    if damaged:
      integrity.report_damaged(directory, damaged, step, resume)
    return step, state
  raise UserError(
      f'No checkpoint in {directory} can be read (steps '
      f'{", ".join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: '
      f'{damaged[0][1]}). They are kept as they are; train in another --workdir '
      'to start afresh.')


def restore_step(directory: epath.Path, step: int, target: Any,
                 meta: dict[str, Any], resume: bool) -> Any:
  """The state of `step`, checked against `meta`, `target` and its integrity.checksum.

  A resume logs each changed field that it can continue with.

  Raises:
    integrity.Damaged: a file of the step cannot be read, or the integrity.checksum differs.
    UserError: this config cannot continue from the step.
  """
  step_dir = directory / str(step)
  saved_meta = read_meta(step_dir)
  integrity.check_meta(saved_meta, meta, step, directory, resume)
  integrity.check_structure(step_dir, target, resume)
  state = integrity.read_item(step_dir, lambda: read_state(step_dir, target, partial=not resume))
  checked = (integrity.CHECKSUM, state) if resume else (integrity.WEIGHTS_CHECKSUM, weights(state))
  if checked[0] in saved_meta and integrity.checksum(checked[1]) != saved_meta[checked[0]]:
    raise integrity.Damaged('its arrays do not match their checksum')
  if resume:
    for f in config_fields.CHANGEABLE_ON_RESUME:
      if f in saved_meta and f in meta and saved_meta[f] != meta[f]:
        logging.warning('Resuming from step %d with config.%s=%r (it was written '
                        'with %r).', step, f, meta[f], saved_meta[f])
  return state


def read_meta(step_dir: epath.Path) -> dict[str, Any]:
  """The config record of the step in `step_dir`.

  Raises:
    integrity.Damaged, UserError: as `integrity.read_item`.
  """
  read = lambda: ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / 'meta')
  return integrity.read_item(step_dir, read)


def newest_record(directory: epath.Path, steps: Sequence[int]) -> dict[str, Any]:
  """The config record of the newest of `steps` that has a readable one, else {}."""
  for step in sorted(steps, reverse=True):
    try:
      return read_meta(directory / str(step))
    except integrity.Damaged:
      continue
  return {}


def read_state(step_dir: epath.Path, target: Any, partial: bool) -> Any:
  """The step's state in the structure of `target`; `partial` reads only its parts."""
  return ocp.PyTreeCheckpointer().restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=partial))


