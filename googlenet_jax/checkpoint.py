"""Orbax checkpoints of the (unreplicated) train state.

Checkpoints hold host-side arrays and no device layout, so a state saved on eight
devices restores on one, and the reverse. Orbax writes each step into a temporary
directory and renames it when complete, so a half-written step is never loaded.
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from googlenet_jax.errors import UserError


def checkpoint_dir(config, workdir: str) -> str:
  """Where checkpoints live: `config.checkpoint_dir`, else WORKDIR/checkpoints.

  A local path is made absolute; a URL (gs://bucket/run) is kept as it is: Orbax
  writes there directly, marking a finished step with a commit file.
  """
  directory = config.checkpoint_dir or os.path.join(workdir, 'checkpoints')
  return directory if '://' in directory else os.path.abspath(directory)


def meta(config) -> dict[str, Any]:
  """What a checkpoint must match to be restored: the model and its input."""
  return {'model': config.model, 'num_classes': config.num_classes,
          'image_size': config.image_size}


def create_manager(directory: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager that keeps the last `max_to_keep` steps in `directory`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, state: Any, meta: dict[str, Any]) -> None:
  """Saves `state` at `state.step` together with JSON `meta` (model, image size)."""
  manager.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore(manager: ocp.CheckpointManager, target: Any,
            meta: dict[str, Any]) -> Any:
  """Restores the latest step into the structure of `target`.

  Raises:
    UserError: there is no checkpoint, or it was written for another model
      (its `meta` differs from `meta`).
  """
  step = manager.latest_step()
  if step is None:
    raise UserError(f'No checkpoint in {manager.directory}: train first, or set '
                    '--config.checkpoint_dir to a directory that holds one.')
  saved_meta = read_item(manager, step, meta=ocp.args.JsonRestore())['meta']
  if saved_meta != meta:
    raise UserError(f'The checkpoint in {manager.directory} was written for '
                    f'{saved_meta}, not {meta}: use another workdir or the same config.')
  return read_item(manager, step, state=ocp.args.StandardRestore(target))['state']


def read_item(manager: ocp.CheckpointManager, step: int, **items) -> Any:
  """Restores `items` of `step`; a damaged checkpoint becomes a UserError."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # Orbax and TensorStore raise many types for bad files.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'Cannot read the checkpoint at step {step} in '
                    f'{manager.directory} ({reason[:200]}): delete that step '
                    'directory to fall back to an earlier one.') from e
