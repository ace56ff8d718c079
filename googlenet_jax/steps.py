"""The per-device training and evaluation steps, and their pmapped form.

The steps are plain functions of one device's shard that sum or average over
devices with `axis_name=sharding.AXIS` collectives; `jax.pmap` runs them on every
local device. Images arrive as uint8 at the dataset's size and are scaled and
resized on the device. The model may compute in bfloat16; its logits, the
losses and the metrics are float32.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from googlenet_jax import augment
from googlenet_jax.sharding import AXIS
from googlenet_jax.train_state import TrainState

Metrics = dict[str, jax.Array]
# Per-channel (mean, std) in [0, 1] that images are normalised with, or None.
Normalization = tuple[tuple[float, ...], tuple[float, ...]] | None


def to_unit_interval(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def resize(images: jax.Array, image_size: int) -> jax.Array:
  """(N, H, W, C) -> (N, S, S, C), bilinearly; unchanged if already S x S."""
  n, height, width, channels = images.shape
  if height == width == image_size:
    return images
  return jax.image.resize(images, (n, image_size, image_size, channels), 'bilinear')


def normalize(images: jax.Array, normalization: Normalization) -> jax.Array:
  """Images in [0, 1] less each channel's mean, over its std; unchanged for None."""
  if normalization is None:
    return images
  mean, std = (jnp.asarray(x, jnp.float32) for x in normalization)
  return (images - mean) / std


def preprocess(images: jax.Array, image_size: int,
               normalization: Normalization = None) -> jax.Array:
  """uint8 (N, H, W, C) -> float32 (N, S, S, C) in [0, 1] (or normalised), resized."""
  return normalize(resize(to_unit_interval(images), image_size), normalization)


def augmented_preprocess(images: jax.Array, image_size: int,
                         augmentation: augment.Augmentation, seed: int,
                         step: jax.Array, normalization: Normalization = None) -> jax.Array:
  """`preprocess` with `augmentation` applied before resizing, keyed by (seed, step, example)."""
  images = to_unit_interval(images)
  if augmentation.enabled:
    key = jax.random.fold_in(jax.random.key(seed), step)
    first_index = jax.lax.axis_index(AXIS) * images.shape[0]
    images = augment.augment_batch(augmentation, key, images, first_index)
  return normalize(resize(images, image_size), normalization)


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


def top5_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """How many of the global batch have their label among the 5 highest logits."""
  _, top5 = jax.lax.top_k(logits, 5)
  hits = jnp.any(top5 == labels[:, None], axis=-1)
  return jax.lax.psum(jnp.sum(hits * mask), axis_name=AXIS)


def confusion_matrix(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Counts of (true class, predicted class) over the global batch, padding masked."""
  num_classes = logits.shape[-1]
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None]
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
  return jax.lax.psum(true.T @ predicted, axis_name=AXIS)


def train_step(state: TrainState, batch: dict[str, jax.Array], image_size: int,
               label_smoothing: float = 0.0,
               augmentation: augment.Augmentation = augment.Augmentation(),
               seed: int = 0,
               normalization: Normalization = None) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's shard; gradients are averaged over devices.

  The images are augmented with keys from `seed` and the step. The loss is
  smoothed by `label_smoothing`; the metrics' loss is plain cross-entropy,
  comparable with the test loss. A batch with a 'mask' (a streamed source's:
  False for an image that could not be decoded) leaves those examples out of
  the loss and the metrics, and counts them as 'skipped'.
  """
  images = augmented_preprocess(batch['image'], image_size, augmentation, seed,
                                state.step, normalization)
  labels = batch['label']
  mask = batch.get('mask')

  def loss_fn(params):
    # BatchNorm in training mode normalises with this step's batch statistics
    # (averaged over devices: the model's axis_name) and returns its updated running
    # averages as the mutable 'batch_stats' collection; {} without BatchNorm.
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    logits = logits.astype(jnp.float32)  # Softmax and loss in float32.
    losses = smoothed_cross_entropy_loss(logits, labels, label_smoothing)
    if mask is None:
      return losses.mean(), (logits, updates['batch_stats'])
    weights = mask.astype(jnp.float32)
    loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, updates['batch_stats'])

  (_, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name=AXIS)
  if mask is None:
    metrics = compute_metrics(logits, labels, jnp.ones(labels.shape, jnp.float32))
  else:
    metrics = compute_metrics(logits, labels, mask.astype(jnp.float32))
    metrics['skipped'] = jax.lax.psum(jnp.sum(~mask), axis_name=AXIS)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def eval_logits(state: TrainState, images: jax.Array, image_size: int,
                normalization: Normalization = None) -> jax.Array:
  """float32 logits of uint8 images in inference mode."""
  # BatchNorm in inference mode (train=False) normalises with the running
  # averages kept in state.batch_stats and leaves them unchanged.
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          preprocess(images, image_size, normalization))
  return logits.astype(jnp.float32)


def eval_step(state: TrainState, batch: dict[str, jax.Array], image_size: int,
              normalization: Normalization = None) -> tuple[Metrics, jax.Array]:
  """Metric sums and confusion matrix of one evaluation batch, and its predicted classes.

  Padding (and any image that could not be read) is masked out of the sums;
  with more than 5 classes the sums count top-5 hits too. The predictions
  ([per-device batch], int32) cover every row, padding included.
  """
  logits = eval_logits(state, batch['image'], image_size, normalization)
  mask = batch['mask'].astype(jnp.int32)
  metrics = compute_metrics(logits, batch['label'], mask.astype(jnp.float32))
  metrics['confusion'] = confusion_matrix(logits, batch['label'], mask)
  if logits.shape[-1] > 5:
    metrics['correct_top5'] = top5_correct(logits, batch['label'], mask)
  return metrics, jnp.argmax(logits, -1).astype(jnp.int32)


def pmap_train_step(step: Callable,
                    devices: Sequence[jax.Device] | None = None) -> Callable:
  """A train step (`train_step` with its settings bound) pmapped over `devices`.

  The devices default to the local ones. The state is donated: its buffers are
  reused for the next one.
  """
  return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=(0,))


def pmap_eval_step(step: Callable,
                   devices: Sequence[jax.Device] | None = None) -> Callable:
  """An eval step (`eval_step` with its image size bound) pmapped over `devices`."""
  return jax.pmap(step, axis_name=AXIS, devices=devices)
