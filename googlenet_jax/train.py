"""Training and evaluation: the per-device steps, pmapped, and the loop around them.

The steps are plain functions of one device's shard that average over devices
with `axis_name='batch'` collectives; `jax.pmap` runs them on every local device.
Images arrive as uint8 28x28 and are resized and scaled on the device.
"""

import functools
import itertools
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
from flax import jax_utils
from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import optax

from googlenet_jax import augment
from googlenet_jax import checkpoint
from googlenet_jax import eval_report
from googlenet_jax import input_pipeline
from googlenet_jax import models
from googlenet_jax import plots
from googlenet_jax import preemption
from googlenet_jax import progress
from googlenet_jax.models import conv_lowering
from googlenet_jax.errors import UserError
from googlenet_jax.metric_writers import MetricWriter

AXIS = 'batch'
Metrics = dict[str, jax.Array]
SCHEDULES = ('constant', 'cosine')


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and BatchNorm's running averages.

  `batch_stats` is {} for models without BatchNorm. It is not trained by the
  optimizer: train_step replaces it with what the model returns.
  """
  batch_stats: Any = struct.field(default_factory=dict)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError, in one line, for a config that cannot run."""
  if config.model not in models.MODELS:
    raise UserError(f'Unknown model {config.model!r}: choose one of '
                    f'{", ".join(sorted(models.MODELS))} (--config.model=NAME).')
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
  min_size = models.MIN_IMAGE_SIZE[config.model]
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
  if config.conv_lowering not in conv_lowering.FORMS:
    raise UserError(f'Unknown config.conv_lowering {config.conv_lowering!r}: choose '
                    f'one of {", ".join(conv_lowering.FORMS)}.')
  if config.schedule not in SCHEDULES:
    raise UserError(f'Unknown config.schedule {config.schedule!r}: choose one of '
                    f'{", ".join(SCHEDULES)}.')
  for field in ('batch_size', 'eval_batch_size'):
    input_pipeline.check_batch_size(config[field], jax.device_count(), field)


def make_workdir(workdir: str) -> None:
  """Creates `workdir`; UserError, before any work is done, if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserError(f'Cannot write to the workdir {workdir} ({e.strerror}): '
                    'choose another --workdir.') from e


def create_model(config: ml_collections.ConfigDict):
  """The model named by `config.model`, its convolutions in `config.conv_lowering`'s form."""
  conv_lowering.set_form(config.conv_lowering)
  return models.MODELS[config.model](num_classes=config.num_classes)


def to_unit_interval(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def resize(images: jax.Array, image_size: int) -> jax.Array:
  """(N, H, W, C) -> (N, S, S, C), bilinearly."""
  n, _, _, channels = images.shape
  return jax.image.resize(images, (n, image_size, image_size, channels), 'bilinear')


def preprocess(images: jax.Array, image_size: int) -> jax.Array:
  """uint8 (N, 28, 28, 1) -> float32 (N, S, S, 1) in [0, 1], resized bilinearly."""
  return resize(to_unit_interval(images), image_size)


def augmented_preprocess(images: jax.Array, image_size: int,
                         augmentation: augment.Augmentation, seed: int,
                         step: jax.Array) -> jax.Array:
  """`preprocess` with `augmentation` applied at 28x28, keyed by (seed, step, example)."""
  images = to_unit_interval(images)
  if augmentation.enabled:
    key = jax.random.fold_in(jax.random.key(seed), step)
    first_index = jax.lax.axis_index(AXIS) * images.shape[0]
    images = augment.augment_batch(augmentation, key, images, first_index)
  return resize(images, image_size)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def smoothed_cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                                label_smoothing: float) -> jax.Array:
  """Per-example cross-entropy against one-hot labels smoothed towards uniform.

  The target puts 1 - label_smoothing + label_smoothing / K on the true class
  and label_smoothing / K on each other class (Szegedy et al., 2016).
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  return optax.softmax_cross_entropy(
      logits, optax.smooth_labels(targets, label_smoothing))


def compute_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
  """Sums of loss, correct predictions and examples over the global batch.

  Sums (not means) so that batches, devices and a padded last batch add up exactly;
  `mask` is 0 for padding.
  """
  metrics = {
      'loss': jnp.sum(cross_entropy_loss(logits, labels) * mask),
      'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      'count': jnp.sum(mask),
  }
  return jax.lax.psum(metrics, axis_name=AXIS)


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """config.learning_rate, constant or after linear warmup with cosine decay to 0."""
  if config.schedule == 'constant':
    # A float, not a schedule: the optimizer state then holds no step count,
    # as in checkpoints of the chapter's recipe.
    return config.learning_rate
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  # A run shorter than its warmup (a quick num_train_steps check) only warms up.
  decay_steps = max(total_train_steps(config, steps_per_epoch), warmup_steps + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=warmup_steps, decay_steps=decay_steps)


def learning_rate_at(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     step: int) -> float:
  """The learning rate that the optimizer used at `step`."""
  rate = create_learning_rate_fn(config, steps_per_epoch)
  return float(rate(step)) if callable(rate) else rate


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """SGD with optional (Nesterov) momentum and weight decay on the kernels.

  `steps_per_epoch` only shapes the learning-rate schedule; the optimizer state's
  structure, which a checkpoint must match, does not depend on it.
  """
  sgd = optax.sgd(create_learning_rate_fn(config, steps_per_epoch),
                  momentum=config.momentum or None, nesterov=config.nesterov)
  if not config.weight_decay:
    return sgd
  # Decay conv and dense kernels, not biases or BatchNorm's scale and offset.
  kernels = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=kernels), sgd)


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict,
                       model, steps_per_epoch: int = 1) -> TrainState:
  """Initial parameters, BatchNorm statistics and optimizer state, on the default device."""
  images = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
  variables = jax.jit(model.init)(rng, images)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=create_optimizer(config, steps_per_epoch))


def train_step(state: TrainState, batch: dict[str, jax.Array], image_size: int,
               label_smoothing: float = 0.0,
               augmentation: augment.Augmentation = augment.Augmentation(),
               seed: int = 0) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's shard; gradients are averaged over devices.

  The images are augmented with keys from `seed` and the step. The loss is
  smoothed by `label_smoothing`; the metrics' loss is plain cross-entropy,
  comparable with the test loss.
  """
  images = augmented_preprocess(batch['image'], image_size, augmentation, seed,
                                state.step)
  labels = batch['label']

  def loss_fn(params):
    # BatchNorm in training mode normalises with this step's batch statistics
    # (averaged over devices: axis_name='batch') and returns its updated running
    # averages as the mutable 'batch_stats' collection; {} without BatchNorm.
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = smoothed_cross_entropy_loss(logits, labels, label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (_, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name=AXIS)
  metrics = compute_metrics(logits, labels, jnp.ones(labels.shape, jnp.float32))
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def eval_logits(state: TrainState, images: jax.Array, image_size: int) -> jax.Array:
  """Logits of uint8 images in inference mode; evaluation and prediction share it."""
  # BatchNorm in inference mode (train=False) normalises with the running
  # averages kept in state.batch_stats and leaves them unchanged.
  return state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                        preprocess(images, image_size))


def confusion_matrix(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Counts of (true class, predicted class) over the global batch, padding masked."""
  num_classes = logits.shape[-1]
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None]
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
  return jax.lax.psum(true.T @ predicted, axis_name=AXIS)


def eval_step(state: train_state.TrainState, batch: dict[str, jax.Array],
              image_size: int) -> Metrics:
  """Metric sums and confusion matrix of one evaluation batch; padding is masked out."""
  logits = eval_logits(state, batch['image'], image_size)
  mask = batch['mask'].astype(jnp.int32)
  metrics = compute_metrics(logits, batch['label'], mask.astype(jnp.float32))
  metrics['confusion'] = confusion_matrix(logits, batch['label'], mask)
  return metrics


def pmap_steps(config: ml_collections.ConfigDict) -> tuple[Callable, Callable]:
  """The train and eval steps, pmapped over all local devices."""
  p_train_step = jax.pmap(
      functools.partial(train_step, image_size=config.image_size,
                        label_smoothing=config.label_smoothing,
                        augmentation=augment.Augmentation.from_config(config),
                        seed=config.seed),
      axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(
      functools.partial(eval_step, image_size=config.image_size), axis_name=AXIS)
  return p_train_step, p_eval_step


def replicate(tree, devices: Sequence[jax.Device] | None = None):
  """Copies `tree` to every local device (or `devices`), laid out as pmap's outputs.

  `flax.jax_utils.replicate` names its mesh axis differently, which makes the
  second step compile the train step a second time.
  """
  devices = devices or jax.local_devices()
  sharding = NamedSharding(Mesh(devices, (AXIS,)), PartitionSpec(AXIS))
  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)
  return jax.tree.map(put, jax.device_get(tree))


def add_metrics(total: Metrics | None, metrics: Metrics) -> Metrics:
  """A running sum of per-batch metric sums, kept on the device."""
  return metrics if total is None else jax.tree.map(jnp.add, total, metrics)


def fetch_metrics(total: Metrics) -> dict[str, Any]:
  """The running sum on the host: scalars as floats, the confusion matrix as numpy."""
  total = jax.device_get(jax_utils.unreplicate(total))
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in total.items()}


def sum_metrics(batches_metrics: Iterable[Metrics]) -> dict[str, Any]:
  """Adds per-batch metric sums on the device and fetches the total once."""
  total = None
  for metrics in batches_metrics:
    total = add_metrics(total, metrics)
  return fetch_metrics(total)


def evaluate(p_eval_step: Callable, state: train_state.TrainState, source,
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Loss, accuracy and confusion matrix over every example of `source`, each once."""
  batches = input_pipeline.eval_batches(
      source, global_batch_size=config.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_local_devices=jax.local_device_count())
  batches = progress.track(batches, 'test', -(-len(source) // config.eval_batch_size),
                           config.eval_batch_size)
  total = sum_metrics(p_eval_step(state, batch) for batch in batches)
  return {'loss': total['loss'] / total['count'],
          'accuracy': total['correct'] / total['count'],
          'num_examples': int(total['count']),
          'confusion_matrix': total['confusion'].tolist()}


def checkpoint_meta(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a checkpoint must match to be restored: the model and its input."""
  return {'model': config.model, 'num_classes': config.num_classes,
          'image_size': config.image_size}


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_train_steps if set, else num_epochs of steps."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


def is_checkpoint_step(config: ml_collections.ConfigDict, step: int) -> bool:
  every = config.checkpoint_every_steps
  return every > 0 and step % every == 0


def save_checkpoint(manager, state: train_state.TrainState,
                    config: ml_collections.ConfigDict, train_loss_sum: float) -> None:
  """Saves the replicated `state`, unless training has diverged since the last save.

  Raises:
    UserError: the training loss or a parameter is NaN or infinite; the last
      good checkpoint is kept as it is.
  """
  host_state = jax.device_get(jax_utils.unreplicate(state))
  params_finite = all(np.isfinite(x).all() for x in jax.tree.leaves(host_state.params))
  if not (math.isfinite(train_loss_sum) and params_finite):
    raise UserError(
        f'The training loss is not finite at step {host_state.step}: stopped '
        f'without saving. The last good checkpoint is step {manager.latest_step()} '
        f'in {manager.directory}; try a lower learning rate.')
  checkpoint.save(manager, host_state, checkpoint_meta(config))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> train_state.TrainState:
  """Trains, evaluating and checkpointing after every epoch; resumes if it can.

  Returns:
    The final (replicated) train state.
  """
  check_config(config)
  make_workdir(workdir)
  sources = input_pipeline.load_sources(config)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(sources['train']),
                                                   config.batch_size)
  num_steps = total_train_steps(config, steps_per_epoch)

  state = create_train_state(jax.random.key(config.seed), config, create_model(config),
                             steps_per_epoch)
  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(config, workdir),
                                      config.max_checkpoints_to_keep)
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, state, checkpoint_meta(config))
    logging.info('Resuming from the checkpoint at step %d.', state.step)
  step = int(state.step)
  state = replicate(state)
  p_train_step, p_eval_step = pmap_steps(config)
  writer = MetricWriter(workdir) if jax.process_index() == 0 else None
  if writer:
    writer.write_config(step, config)

  with preemption.StopSignal() as stop:
    while step < num_steps:
      epoch, step_in_epoch = divmod(step, steps_per_epoch)
      epoch_end = min((epoch + 1) * steps_per_epoch, num_steps)
      batches = input_pipeline.train_batches(
          sources['train'], global_batch_size=config.batch_size, seed=config.seed,
          epoch=epoch, process_index=jax.process_index(),
          process_count=jax.process_count(),
          num_local_devices=jax.local_device_count(), start_step=step_in_epoch)
      start_time = time.perf_counter()
      train_total = None  # Summed as it goes: a checkpoint mid-epoch reads it.
      bar = progress.epoch_progress(step, num_steps, steps_per_epoch, config.batch_size)
      for batch in itertools.islice(batches, epoch_end - step):
        state, metrics = p_train_step(state, batch)
        train_total = add_metrics(train_total, metrics)
        bar.update(metrics)
        step += 1
        stopping = stop.requested(step)
        if stopping or (is_checkpoint_step(config, step) and step < epoch_end):
          save_checkpoint(manager, state, config, fetch_metrics(train_total)['loss'])
        if stopping:
          bar.close()
          manager.wait_until_finished()
          logging.warning('Stopped at step %d with a checkpoint; run the same '
                          'command again to resume.', step)
          return state
      bar.close()
      train = fetch_metrics(train_total)
      images_per_sec = train['count'] / (time.perf_counter() - start_time)
      save_checkpoint(manager, state, config, train['loss'])
      test = evaluate(p_eval_step, state, sources['test'], config)
      scalars = {'epoch': epoch + 1, 'train_loss': train['loss'] / train['count'],
                 'train_accuracy': train['correct'] / train['count'],
                 'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
                 'train_images_per_sec': images_per_sec,
                 'learning_rate': learning_rate_at(config, steps_per_epoch, step)}
      logging.info('step %d, epoch %d: train loss %.4f, test loss %.4f, test '
                   'accuracy %.4f, %.1f images/s', step, epoch + 1,
                   scalars['train_loss'], test['loss'], test['accuracy'],
                   images_per_sec)
      if writer:
        writer.write_scalars(step, scalars)
        plots.write_curves(workdir)
  manager.wait_until_finished()
  if writer:
    writer.close()
  return state


def restore_for_eval(config: ml_collections.ConfigDict,
                     workdir: str) -> train_state.TrainState:
  """The latest checkpoint's state, on the host; raises UserError if there is none."""
  check_config(config)
  state = create_train_state(jax.random.key(config.seed), config, create_model(config))
  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(config, workdir),
                                      read_only=True)
  return checkpoint.restore(manager, state, checkpoint_meta(config))


def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint on the whole test set.

  Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png, and prints the
  accuracy of each class.
  """
  state = restore_for_eval(config, workdir)
  source = input_pipeline.load_sources(config)['test']
  _, p_eval_step = pmap_steps(config)
  result = evaluate(p_eval_step, replicate(state), source, config)
  result['step'] = int(state.step)
  result['per_class_accuracy'] = eval_report.per_class_accuracy(
      result['confusion_matrix'])
  logging.info('Checkpoint at step %d: test loss %.4f, test accuracy %.4f on %d '
               'examples.', result['step'], result['loss'], result['accuracy'],
               result['num_examples'])
  if jax.process_index() == 0:
    eval_report.write(result, workdir)
  return result
