"""Small generated Fashion-MNIST IDX files, for tests that must not need the real data."""

import gzip
import os

import numpy as np

from googlenet_jax.data import fashion_mnist

NUM_TRAIN = 50
NUM_TEST = 23


def idx_bytes(array: np.ndarray) -> bytes:
  """Returns `array` as an uncompressed IDX file of unsigned bytes."""
  header = bytes([0, 0, 0x08, array.ndim])
  return header + np.array(array.shape, '>u4').tobytes() + array.tobytes()


def write_idx(path, array: np.ndarray):
  """Writes `array` as a gzipped IDX file."""
  with gzip.open(path, 'wb') as f:
    f.write(idx_bytes(array))


def write_dataset(directory, num_train=NUM_TRAIN, num_test=NUM_TEST):
  """Writes the four IDX files; returns {split: (images, labels)}.

  Pixel [0, 0] of example i is i, so an example can be told by its image.
  """
  rng = np.random.default_rng(0)
  arrays = {}
  for split, num in (('train', num_train), ('test', num_test)):
    images = rng.integers(0, 256, (num, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(num)
    labels = (np.arange(num) % 10).astype(np.uint8)
    images_file, labels_file = fashion_mnist.FILES[split]
    write_idx(os.path.join(directory, images_file), images)
    write_idx(os.path.join(directory, labels_file), labels)
    arrays[split] = (images, labels)
  return arrays
