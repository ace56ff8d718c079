"""Host-side batches: uint8 images, split across devices, in an order fixed by (seed, epoch).

A dataset's `load` (googlenet_jax/data) gives each split as a `Source`: an
`ArraySource` holds its examples in memory, so a batch is one numpy gather; a
streamed source (data/tfds_images.py) decodes and crops each batch in worker
processes. `prefetch_to_device` copies the next batches to the devices while a
step runs. Scaling, and resizing where needed, happen later, on the device.

Each process reads only its own rows of each global batch, and the global
batches depend only on (seed, epoch), so the data seen at a step is the same
however many processes and devices share it.
"""

import collections
from collections.abc import Iterable, Iterator, Sequence
import contextlib
import itertools
from typing import Protocol

import jax
import numpy as np

from googlenet_jax import errors
from googlenet_jax import sharding

# Examples per read from the tfds data source while loading a split.
_READ_CHUNK = 10_000


Batch = dict[str, np.ndarray]


class Source(Protocol):
  """A split's examples, read by index."""

  def __len__(self) -> int:
    """The number of examples."""

  def read(self, index_batches: Sequence[np.ndarray], *, train: bool, seed: int,
           epoch: int) -> Iterator[Batch]:
    """Yields the examples of each array of `index_batches`, in order.

    Each batch is {'image': uint8 [n, H, W, C], 'label': int32 [n]}, and
    'mask': bool [n], False for an example that could not be read, where that
    can happen. `train` asks for the training form of the images (a streamed
    source's random crop, drawn from `seed`, `epoch` and the example's index),
    else the evaluation form. Closing the iterator stops any workers.
    """


class ArraySource:
  """Examples held in host memory: read-only numpy arrays, gathered by index."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    """Keeps read-only views of the examples.

    Args:
      images: uint8 [N, H, W, C].
      labels: [N] class indices; kept as int32, the batches' dtype.
    """
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self._images = _read_only(np.asarray(images, np.uint8))
    self._labels = _read_only(np.asarray(labels, np.int32))

  @property
  def images(self) -> np.ndarray:
    """uint8 [N, H, W, C], read-only."""
    return self._images

  @property
  def labels(self) -> np.ndarray:
    """int32 [N], read-only."""
    return self._labels

  def __len__(self) -> int:
    return len(self._labels)

  def read(self, index_batches: Sequence[np.ndarray], *, train: bool, seed: int,
           epoch: int) -> Iterator[Batch]:
    """`Source.read`: one gather per batch; the images are the same in either form."""
    del train, seed, epoch  # Every example is read as it is held.
    for indices in index_batches:
      yield {'image': self._images[indices], 'label': self._labels[indices]}


def read_source(data_source) -> ArraySource:
  """Reads every example of a tfds data source into host memory, in order.

  Args:
    data_source: `builder.as_data_source(split)`: `len()`, and
      `__getitems__(indices)` returning {'image', 'label'} examples.
  """
  num_examples = len(data_source)
  image_shape = np.shape(data_source[0]['image']) if num_examples else (0, 0, 0)
  images = np.empty((num_examples, *image_shape), np.uint8)
  labels = np.empty(num_examples, np.int32)
  # In chunks: a call per example costs a round trip through the reader each,
  # one call for all holds every example as a dict at once.
  for start in range(0, num_examples, _READ_CHUNK):
    stop = min(start + _READ_CHUNK, num_examples)
    examples = data_source.__getitems__(range(start, stop))
    np.stack([example['image'] for example in examples],
             out=images[start:stop])
    labels[start:stop] = [example['label'] for example in examples]
  return ArraySource(images, labels)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Returns the number of full training batches in an epoch."""
  if global_batch_size > num_examples:
    raise errors.UserError(
        f'batch_size {global_batch_size} is larger than the {num_examples} '
        'training examples: use a smaller --config.batch_size')
  return num_examples // global_batch_size


def train_batches(source: Source, *, global_batch_size: int, seed: int,
                  epoch: int, process_index: int, process_count: int,
                  num_local_devices: int, start_step: int = 0) -> Iterator[Batch]:
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
    {'image': uint8 [num_local_devices, per_device, H, W, C],
     'label': int32 [num_local_devices, per_device]}, and the source's 'mask'
    of readable examples if it gives one.
  """
  sharding.check_batch_size(global_batch_size, process_count * num_local_devices)
  local_batch_size = global_batch_size // process_count
  order = np.random.default_rng((seed, epoch)).permutation(len(source))
  starts = [step * global_batch_size + process_index * local_batch_size
            for step in range(start_step, steps_per_epoch(len(source), global_batch_size))]
  index_batches = [order[start:start + local_batch_size] for start in starts]
  with contextlib.closing(source.read(index_batches, train=True, seed=seed,
                                      epoch=epoch)) as batches:
    for batch in batches:
      yield per_device(batch, num_local_devices)


def eval_batches(source: Source, *, global_batch_size: int, process_index: int,
                 process_count: int, num_local_devices: int) -> Iterator[Batch]:
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
    As `train_batches`, with 'mask': bool [num_local_devices, per_device],
    True for real examples that could be read.
  """
  sharding.check_batch_size(global_batch_size, process_count * num_local_devices,
                            'eval_batch_size')
  local_batch_size = global_batch_size // process_count
  num_examples = len(source)
  starts = [step * global_batch_size + process_index * local_batch_size
            for step in range(-(-num_examples // global_batch_size))]
  indices = [np.arange(start, start + local_batch_size) for start in starts]
  padding = [index < num_examples for index in indices]
  with contextlib.closing(source.read([np.where(real, index, 0) for index, real
                                       in zip(indices, padding)],
                                      train=False, seed=0, epoch=0)) as batches:
    for batch, real in zip(batches, padding):
      batch['mask'] = real & batch.get('mask', True)
      yield per_device(batch, num_local_devices)


def prefetch_to_device(batches: Iterable[dict[str, np.ndarray]],
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Yields `batches` on the local devices, copying the next `size` ahead.

  Each batch is copied to the devices before the one in use is yielded, so
  while the caller's (asynchronously dispatched) step runs, the next `size`
  batches are already on the devices or on their way, and no step waits for
  the host.

  Every array [num_local_devices, ...] is split over its leading axis, row d
  on `jax.local_devices()[d]`, as `jax.pmap` splits its inputs: a NamedSharding
  over the local devices with axis `sharding.AXIS`, the layout `sharding.replicate` gives
  the state. A pmapped step compiles once per input layout it sees, numpy
  arrays being one layout and these another, so feed a step from here only.

  Not `flax.jax_utils.prefetch_to_device`: it copies each array once more on
  the host (re-stacking the device rows), and only `size - 1` batches wait
  while one is in use. Nor `jax.device_put`: `jax.make_array_from_callback`
  makes the same arrays in a third of its host time (docs/benchmarks.md).

  Args:
    batches: host batches, as `train_batches` and `eval_batches` yield.
    size: how many batches to keep on the devices ahead of the one in use.

  Yields:
    Each batch of `batches`, in order, its numpy arrays now jax.Arrays.
  """
  layout = sharding.device_sharding()

  def put(batch):
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        x.shape, layout, x.__getitem__), batch)

  batches = iter(batches)
  queue = collections.deque(map(put, itertools.islice(batches, size)))
  while queue:
    batch = queue.popleft()
    queue.extend(map(put, itertools.islice(batches, 1)))
    yield batch


def per_device(batch: Batch, num_local_devices: int) -> Batch:
  """`batch`'s arrays [n, ...] shaped [num_local_devices, n / num_local_devices, ...]."""
  return {name: array.reshape(num_local_devices, -1, *array.shape[1:])
          for name, array in batch.items()}


def _read_only(array: np.ndarray) -> np.ndarray:
  """A read-only view of `array`; the caller's array stays writable."""
  view = array.view()
  view.flags.writeable = False
  return view
