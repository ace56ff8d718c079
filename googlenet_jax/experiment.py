"""The one place that reads a config: it builds what training, eval and compile run.

`build(config)` makes an `Experiment`: the model, the dataset, the optimizer and
its learning rate, the pmapped train and eval steps, the number of steps and
what each checkpoint records. `build_inference` makes the `Inference` of a
checkpoint, its network taken from the checkpoint's record. Everything is built
once and handed on as values; the loop, evaluation, checkpoints and reports
never read the ConfigDict.
"""

import dataclasses
import functools
from typing import Any, Callable, Collection, Sequence

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import optax

from googlenet_jax import augment
from googlenet_jax import data
from googlenet_jax import input_pipeline
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import checkpoint
from googlenet_jax.runtime import config_fields


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """Where checkpoints go and how often: `config.checkpoint_*`."""
  directory: str  # config.checkpoint_dir; '' = WORKDIR/checkpoints.
  every_steps: int  # Also mid-epoch every this many steps; 0 = no.
  every_minutes: float  # And when this long has passed since the last; 0 = no.
  max_to_keep: int


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A training run, built once from its config."""
  model: nn.Module
  dataset: data.Dataset | None  # None when built without data (--mode=compile).
  example_shape: tuple[int, int, int]  # Of each example as the host batches it, uint8.
  image_shape: tuple[int, int, int]  # The model's input: (image_size, image_size, C).
  optimizer: optax.GradientTransformation
  learning_rate_fn: Callable[[int], float]  # The rate of the update at a step (from 0).
  train_step: Callable  # steps.train_step with the config's settings, per device.
  eval_step: Callable  # steps.eval_step at the config's image size, per device.
  p_train_step: Callable  # train_step pmapped over the devices given to `build`.
  p_eval_step: Callable
  steps_per_epoch: int
  num_steps: int
  seed: int  # Of the initial parameters, the data order and the augmentation.
  batch_size: int  # Global, over every device of every process.
  eval_batch_size: int
  checkpointing: Checkpointing
  record: dict[str, Any]  # What each checkpoint records of the config.
  config_text: str  # The whole config, keys sorted: TensorBoard's copy, the hosts' check.

  def initial_state(self) -> train_state.TrainState:
    """The initial train state, on the host's default device."""
    return train_state.create_train_state(jax.random.key(self.seed), self.model,
                                          self.optimizer, self.image_shape)

  def abstract_state(self) -> train_state.TrainState:
    """The train state's shapes: the target a checkpoint is restored into."""
    return train_state.abstract_train_state(self.model, self.optimizer, self.image_shape)


def with_dataset_classes(config: ml_collections.ConfigDict,
                         dataset: data.Dataset | None = None) -> ml_collections.ConfigDict:
  """`config`, or a copy whose num_classes 0 is its dataset's number of classes.

  The number is `dataset`'s, where it is loaded, else what the dataset's spec
  reads without loading it.

  Raises:
    UserError: num_classes is negative, or is 0 and the dataset, not loaded,
      cannot say how many classes it has.
  """
  if config.num_classes > 0:
    return config
  if config.num_classes < 0:
    raise UserError(f'config.num_classes is {config.num_classes}: give the number of '
                    "classes, or 0 for the dataset's.")
  count_classes = data.spec(config.dataset).num_classes
  if dataset is None and count_classes is None:
    raise UserError(f'config.num_classes is 0 (the dataset\'s), but dataset '
                    f'{config.dataset} gives no number of classes before it is loaded: '
                    'set --config.num_classes.')
  resolved = config.copy_and_resolve_references()
  resolved.num_classes = (len(dataset.class_names) if dataset is not None
                          else count_classes(config.data_dir))
  return resolved


def create_model(config: ml_collections.ConfigDict, conv_form: str | None = None,
                 platform: str | None = None) -> nn.Module:
  """The config's model; `conv_form` (default config.conv_lowering) for `platform`."""
  config = with_dataset_classes(config)
  return train_state.create_model(config.model, config.num_classes,
                                  conv_form or config.conv_lowering, config.dtype,
                                  platform)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The model's input: the dataset's channels at config.image_size."""
  channels = data.spec(config.dataset).example_shape(config.image_size)[-1]
  return (config.image_size, config.image_size, channels)


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_train_steps if set, else num_epochs of steps."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """config.learning_rate, constant or after linear warmup with cosine decay to 0.

  The constant rate is a float, not a schedule: the optimizer state then holds
  no step count, as in checkpoints of the chapter's recipe.
  """
  if config.schedule == 'constant':
    return config.learning_rate
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  # A run shorter than its warmup (a quick num_train_steps check) only warms up.
  decay_steps = max(total_train_steps(config, steps_per_epoch), warmup_steps + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup_steps,
      decay_steps=decay_steps)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with the config's momentum, weight decay and learning-rate schedule.

  `steps_per_epoch` only shapes the schedule; the optimizer state's structure,
  which a checkpoint must match, does not depend on it.
  """
  return train_state.create_optimizer(create_learning_rate_fn(config, steps_per_epoch),
                                      config.momentum, config.nesterov,
                                      config.weight_decay)


def augmentation(config: ml_collections.ConfigDict) -> augment.Augmentation:
  """The training step's augmentation: `config.augment_*`."""
  return augment.Augmentation(crop_padding=config.augment_crop_padding,
                              flip=config.augment_flip,
                              erase_probability=config.augment_erase_probability)


def load_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """The config's dataset, loaded; its classes must be `config.num_classes`, unless 0.

  Raises:
    UserError: the dataset cannot be read, or has another number of classes.
  """
  spec = data.spec(config.dataset)
  dataset = spec.load(config.data_dir, **{option: config[option] for option in spec.options})
  if config.num_classes and len(dataset.class_names) != config.num_classes:
    raise UserError(f'config.num_classes is {config.num_classes}, but {config.dataset} has '
                    f'{len(dataset.class_names)} classes: run with '
                    f'--config.num_classes={len(dataset.class_names)}.')
  return dataset


def build(config: ml_collections.ConfigDict, *, devices: Sequence[jax.Device] | None = None,
          load_data: bool = True) -> Experiment:
  """The Experiment of `config`, its steps pmapped over `devices` (default: local).

  The model's convolutions take the form of the devices' platform. Without
  `load_data` (--mode=compile), nothing is read (but the number of classes, for
  num_classes 0) and an epoch counts as 1 step, which shapes only the
  schedule, not the optimizer state.

  Raises:
    UserError: a batch size does not split over the devices, or the data
      cannot be read; nothing has been written.
  """
  num_devices = len(devices) if devices else jax.device_count()
  validation.check_batch_sizes(config, num_devices)
  dataset = load_dataset(config) if load_data else None
  config = with_dataset_classes(config, dataset)
  steps_per_epoch = (input_pipeline.steps_per_epoch(len(dataset.splits['train']),
                                                    config.batch_size) if dataset else 1)
  learning_rate = create_learning_rate_fn(config, steps_per_epoch)
  platform = devices[0].platform if devices else None
  normalization = data.spec(config.dataset).normalization
  train_step = functools.partial(steps.train_step, image_size=config.image_size,
                                 label_smoothing=config.label_smoothing,
                                 augmentation=augmentation(config), seed=config.seed,
                                 normalization=normalization)
  eval_step = functools.partial(steps.eval_step, image_size=config.image_size,
                                normalization=normalization)
  return Experiment(
      model=create_model(config, platform=platform), dataset=dataset,
      example_shape=data.spec(config.dataset).example_shape(config.image_size),
      image_shape=image_shape(config),
      optimizer=create_optimizer(config, steps_per_epoch),
      learning_rate_fn=learning_rate if callable(learning_rate) else lambda _: learning_rate,
      train_step=train_step, eval_step=eval_step,
      p_train_step=steps.pmap_train_step(train_step, devices),
      p_eval_step=steps.pmap_eval_step(eval_step, devices),
      steps_per_epoch=steps_per_epoch,
      num_steps=total_train_steps(config, steps_per_epoch),
      seed=config.seed, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size,
      checkpointing=Checkpointing(config.checkpoint_dir, config.checkpoint_every_steps,
                                  config.checkpoint_every_minutes,
                                  config.max_checkpoints_to_keep),
      record=config_fields.record(config),
      config_text=str(config))


@dataclasses.dataclass(frozen=True)
class Inference:
  """A checkpoint's weights, and what eval and predict need to run them."""
  state: train_state.TrainState  # On the host, without an optimizer.
  checkpoint_path: str  # The step's directory.
  p_eval_step: Callable
  test: input_pipeline.ArraySource
  class_names: tuple[str, ...]
  eval_batch_size: int
  num_predictions: int  # Test images drawn by --mode=predict.
  predictions_only_mistakes: bool
  record: dict[str, Any]  # The config it ran with, as a checkpoint records it.


def inference_config(config: ml_collections.ConfigDict, record: dict[str, Any],
                     overrides: Collection[str] = ()) -> ml_collections.ConfigDict:
  """`config` with the network and compute fields of a checkpoint's `record`.

  A field in `overrides` (set on the command line) keeps its value: a compute
  field (dtype) then runs as asked; a network field is checked against the
  record when the checkpoint is read. Fields the record lacks (it predates
  them) keep the config's value. num_classes 0, the dataset's, is the record's.
  """
  config = config.copy_and_resolve_references()
  if config.num_classes == 0:
    overrides = set(overrides) - {'num_classes'}
  for field in config_fields.READ_FOR_INFERENCE:
    if field in record and field not in overrides and record[field] != config[field]:
      logging.info("Using the checkpoint's %s=%r (the config has %r).", field,
                   record[field], config[field])
      config[field] = record[field]
  return config


def build_inference(config: ml_collections.ConfigDict, workdir: str,
                    checkpoint_path: str | None = None,
                    overrides: Collection[str] = ()) -> Inference:
  """The weights of the newest readable checkpoint, with the test split to run them on.

  Only the parameters and BatchNorm statistics are read, so the optimizer and
  training fields that wrote the checkpoint need not be given.

  Args:
    config: the run's config; its network fields are defaults (see
      `inference_config`).
    workdir: the training's workdir, whose checkpoints are read unless
      `checkpoint_path` is given.
    checkpoint_path: a checkpoints directory, one step's directory or a workdir.
    overrides: the config fields the user set; see `inference_config`.

  Raises:
    UserError: there is no readable checkpoint, or an override changes the network.
  """
  directory, found = checkpoint.find_steps(
      checkpoint_path or checkpoint.checkpoint_dir(config.checkpoint_dir, workdir))
  config = inference_config(config, checkpoint.newest_record(directory, found), overrides)
  validation.check_batch_sizes(config, jax.device_count(), ('eval_batch_size',))
  model = create_model(config)
  target = checkpoint.weights(train_state.abstract_train_state(model, None,
                                                               image_shape(config)))
  record = config_fields.record(config)
  step, weights = checkpoint.restore(directory, found, target, record)
  state = train_state.TrainState(step=step, apply_fn=model.apply, tx=None, opt_state=None,
                                 **weights)  # As `train_state.for_inference` makes it.
  dataset = load_dataset(config)
  return Inference(state, str(directory / str(step)),
                   steps.pmap_eval_step(functools.partial(
                       steps.eval_step, image_size=config.image_size,
                       normalization=data.spec(config.dataset).normalization)),
                   dataset.splits['test'],
                   dataset.class_names, config.eval_batch_size, config.num_predictions,
                   config.predictions_only_mistakes, record)
