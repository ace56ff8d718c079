"""What each config field is to a checkpoint: declared once, read by resume and eval.

Every field of every config has one role. The role says whether a checkpoint
records the field, whether a resumed training may change it, and whether
inference (eval, predict) takes it from the checkpoint. tests/test_config_fields.py
fails for a field of a shipped config that has none.
"""

import enum

import ml_collections


class Role(enum.Enum):
  """What a field changes, as a checkpoint sees it."""
  # The network or its input: the parameters' shapes. Inference reads it from
  # the checkpoint; neither a resume nor an evaluation may change it.
  NETWORK = 'network'
  # How the network computes, not what it holds. Inference reads it from the
  # checkpoint unless the command line sets it; a resume may change it.
  COMPUTE = 'compute'
  # The optimizer state's structure. A resume may not change it; inference,
  # which restores only the weights, ignores it.
  OPTIMIZER = 'optimizer'
  # Which examples a step sees, in which order. A resume may not change it.
  DATA_ORDER = 'data order'
  # Training from here on. A resume may change it (e.g. train longer), logged.
  TRAINING = 'training'
  # Where the data is and which split is evaluated. Inference reads it from the
  # checkpoint unless the command line sets it, so `--mode=eval --workdir=DIR`
  # alone finds the run's data; a resume may change it (the data moved).
  DATA_SOURCE = 'data source'
  # Where things are and how often they are written or drawn: nothing a
  # checkpoint records or checks.
  RUN = 'run'

  @property
  def recorded(self) -> bool:
    """Whether a checkpoint's record holds fields of this role."""
    return self is not Role.RUN

  @property
  def fixed_by_checkpoint(self) -> bool:
    """Whether a resumed training must keep the checkpoint's value."""
    return self in (Role.NETWORK, Role.OPTIMIZER, Role.DATA_ORDER)

  @property
  def read_for_inference(self) -> bool:
    """Whether eval and predict take the checkpoint's value."""
    return self in (Role.NETWORK, Role.COMPUTE, Role.DATA_SOURCE)


ROLES = {
    'model': Role.NETWORK,
    'dataset': Role.NETWORK,  # Its images' channels shape the first conv.
    'num_classes': Role.NETWORK,
    'image_size': Role.NETWORK,
    'dtype': Role.COMPUTE,
    'conv_lowering': Role.COMPUTE,
    'momentum': Role.OPTIMIZER,
    'nesterov': Role.OPTIMIZER,
    'weight_decay': Role.OPTIMIZER,
    'schedule': Role.OPTIMIZER,  # A schedule's optimizer state counts steps.
    'batch_size': Role.DATA_ORDER,
    'train_split': Role.DATA_ORDER,
    'seed': Role.DATA_ORDER,
    'num_epochs': Role.TRAINING,
    'num_train_steps': Role.TRAINING,
    'learning_rate': Role.TRAINING,
    'warmup_epochs': Role.TRAINING,
    'label_smoothing': Role.TRAINING,
    'augment_crop_padding': Role.TRAINING,
    'augment_flip': Role.TRAINING,
    'augment_erase_probability': Role.TRAINING,
    'compilation_cache_dir': Role.RUN,
    'data_dir': Role.DATA_SOURCE,
    'source_dir': Role.DATA_SOURCE,
    'eval_split': Role.DATA_SOURCE,
    'data_workers': Role.RUN,
    'verify_checksums': Role.RUN,
    'eval_batch_size': Role.RUN,
    'checkpoint_every_steps': Role.RUN,
    'checkpoint_every_minutes': Role.RUN,
    'max_checkpoints_to_keep': Role.RUN,
    'checkpoint_dir': Role.RUN,
    'num_predictions': Role.RUN,
    'predictions_only_mistakes': Role.RUN,
}


def fields(predicate) -> tuple[str, ...]:
  """The fields whose role satisfies `predicate`, a function of a Role."""
  return tuple(field for field, role in ROLES.items() if predicate(role))


RECORDED = fields(lambda role: role.recorded)
FIXED_BY_CHECKPOINT = fields(lambda role: role.fixed_by_checkpoint)
READ_FOR_INFERENCE = fields(lambda role: role.read_for_inference)
NETWORK = fields(lambda role: role is Role.NETWORK)
CHANGEABLE_ON_RESUME = fields(lambda role: role.recorded and not role.fixed_by_checkpoint)


def record(config: ml_collections.ConfigDict) -> dict:
  """The fields a checkpoint records of `config`."""
  return {field: config[field] for field in RECORDED}
