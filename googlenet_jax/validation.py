"""Checks of a config before any work is done: each problem is one UserError line."""

import ml_collections

from googlenet_jax import models
from googlenet_jax import sharding
from googlenet_jax.errors import UserError
from googlenet_jax.models import conv_lowering

SCHEDULES = ('constant', 'cosine')
DTYPES = ('float32', 'bfloat16')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError, in one line, for a config that cannot run.

  main.py calls it once, before any mode; the batch sizes against the devices
  are checked where the devices are known (`check_batch_sizes`).
  """
  check_choice(config, 'model', models.MODELS)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'image_size'):
    if config[field] <= 0:
      raise UserError(f'config.{field} must be positive, got {config[field]}.')
  if config.learning_rate <= 0:
    raise UserError(f'config.learning_rate must be positive, got {config.learning_rate}.')
  if config.num_train_steps == 0 or config.num_train_steps < -1:
    raise UserError('config.num_train_steps must be -1 or positive (-1 = use '
                    f'num_epochs), got {config.num_train_steps}.')
  if config.checkpoint_every_steps < 0:
    raise UserError('config.checkpoint_every_steps must be 0 (epoch ends only) or '
                    f'positive, got {config.checkpoint_every_steps}.')
  if config.checkpoint_every_minutes < 0:
    raise UserError('config.checkpoint_every_minutes must be 0 (no timed checkpoints) '
                    f'or positive, got {config.checkpoint_every_minutes}.')
  min_size = models.MODELS[config.model].min_image_size
  if config.image_size < min_size:
    raise UserError(f'config.image_size {config.image_size} is too small for '
                    f'{config.model}: its smallest working image size is {min_size}.')
  if not 0 <= config.label_smoothing < 1:
    raise UserError('config.label_smoothing must be in [0, 1), got '
                    f'{config.label_smoothing}.')
  if config.augment_crop_padding < 0:
    raise UserError('config.augment_crop_padding must be 0 (no crop) or a number of '
                    f'pixels, got {config.augment_crop_padding}.')
  if not 0 <= config.augment_erase_probability <= 1:
    raise UserError('config.augment_erase_probability must be in [0, 1], got '
                    f'{config.augment_erase_probability}.')
  check_choice(config, 'conv_lowering', conv_lowering.FORMS)
  check_choice(config, 'schedule', SCHEDULES)
  check_choice(config, 'dtype', DTYPES)


def check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int,
                      fields: tuple[str, ...] = ('batch_size', 'eval_batch_size')) -> None:
  """Raises UserError unless each batch size of `fields` splits over `num_devices`."""
  for field in fields:
    sharding.check_batch_size(config[field], num_devices, field)


def check_choice(config: ml_collections.ConfigDict, field: str, choices) -> None:
  """Raises UserError unless config[field] is one of `choices`."""
  if config[field] not in choices:
    raise UserError(f'Unknown config.{field} {config[field]!r}: choose one of '
                    f'{", ".join(sorted(choices))} (--config.{field}=NAME).')
