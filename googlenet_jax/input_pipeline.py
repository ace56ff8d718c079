"""Host-side batches of Fashion-MNIST: uint8 images, split across devices.

A source is anything with `len()` and `__getitems__(indices)` returning a list
of {'image': uint8 [28, 28, 1], 'label': int} examples: a tfds data source, or
an `ArraySource`. Resizing and scaling happen later, on the device.

Each process reads only its own rows of each global batch, and the global
batches depend only on (seed, epoch), so the data seen at a step is the same
however many processes and devices share it.
"""

from collections.abc import Iterator, Sequence
import functools

import jax
from jax.experimental import multihost_utils
import numpy as np

from googlenet_jax import errors
from googlenet_jax.data import fashion_mnist
from googlenet_jax.validation import check_batch_size

CLASS_NAMES = fashion_mnist.CLASS_NAMES


class ArraySource:
  """An in-memory source over arrays of images [N, 28, 28, 1] and labels [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self._images = images
    self._labels = labels

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {'image': self._images[index], 'label': self._labels[index]}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]


def load_sources(config) -> dict[str, object]:
  """Returns {'train': source, 'test': source}, preparing the data if needed.

  Args:
    config: reads `data_dir` (tfds data directory; '' for tfds's default),
      `source_dir` (directory of the IDX files) and `verify_checksums`.
  """
  prepare = functools.partial(fashion_mnist.get_builder, config.data_dir,
                              config.source_dir, config.verify_checksums)
  if jax.process_count() > 1:
    # Process 0 prepares first, so hosts sharing a data_dir never write it twice.
    if jax.process_index() == 0:
      prepare()
    multihost_utils.sync_global_devices('fashion_mnist_idx prepared')
  builder = prepare()
  return {split: builder.as_data_source(split) for split in ('train', 'test')}


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Returns the number of full training batches in an epoch."""
  if global_batch_size > num_examples:
    raise errors.UserError(
        f'batch_size {global_batch_size} is larger than the {num_examples} '
        'training examples: use a smaller --config.batch_size')
  return num_examples // global_batch_size


def train_batches(source, *, global_batch_size: int, seed: int, epoch: int,
                  process_index: int, process_count: int,
                  num_local_devices: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's share of each training batch of one epoch.

  The epoch's order is one permutation of all examples, fixed by (seed, epoch);
  it is cut into global batches, dropping the remainder, and process p reads
  rows [p * B / P, (p + 1) * B / P) of each.

  Args:
    source: the training examples.
    global_batch_size: examples per step over all processes (B).
    seed: the data seed.
    epoch: the epoch number; each epoch has its own order.
    process_index: this process's index (p).
    process_count: the number of processes (P).
    num_local_devices: the devices this process feeds.
    start_step: the first step to yield, to resume mid-epoch.

  Yields:
    {'image': uint8 [num_local_devices, per_device, 28, 28, 1],
     'label': int32 [num_local_devices, per_device]}.
  """
  check_batch_size(global_batch_size, process_count * num_local_devices)
  local_batch_size = global_batch_size // process_count
  order = np.random.default_rng((seed, epoch)).permutation(len(source))
  for step in range(start_step, steps_per_epoch(len(source),
                                                global_batch_size)):
    start = step * global_batch_size + process_index * local_batch_size
    indices = order[start:start + local_batch_size]
    yield _read_batch(source, indices, num_local_devices)


def eval_batches(source, *, global_batch_size: int, process_index: int,
                 process_count: int,
                 num_local_devices: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's share of every example once, in order.

  There are ceil(N / B) global batches on every process, so collectives line
  up; the last is padded with example 0, which `mask` marks False.

  Args:
    source: the evaluation examples.
    global_batch_size: examples per step over all processes (B).
    process_index: this process's index.
    process_count: the number of processes.
    num_local_devices: the devices this process feeds.

  Yields:
    As `train_batches`, plus 'mask': bool [num_local_devices, per_device],
    True for real examples.
  """
  check_batch_size(global_batch_size, process_count * num_local_devices,
                   'eval_batch_size')
  local_batch_size = global_batch_size // process_count
  num_examples = len(source)
  for step in range(-(-num_examples // global_batch_size)):
    start = step * global_batch_size + process_index * local_batch_size
    indices = np.arange(start, start + local_batch_size)
    mask = indices < num_examples
    batch = _read_batch(source, np.where(mask, indices, 0), num_local_devices)
    batch['mask'] = mask.reshape(num_local_devices, -1)
    yield batch


def _read_batch(source, indices: np.ndarray,
                num_local_devices: int) -> dict[str, np.ndarray]:
  """Reads `indices` and shapes them [num_local_devices, per_device, ...]."""
  examples = source.__getitems__(indices.tolist())
  images = np.stack([example['image'] for example in examples])
  labels = np.array([example['label'] for example in examples], np.int32)
  return {
      'image': images.reshape(num_local_devices, -1, *images.shape[1:]),
      'label': labels.reshape(num_local_devices, -1),
  }
