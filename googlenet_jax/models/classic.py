"""The chapter's comparison points, as D2L defines them: AlexNet, VGG-11 and NiN.

One input channel and `num_classes` outputs, NHWC. Pools are PyTorch's default
(no padding), convs pad as D2L writes them. Used by googlenet_jax/tools/compare.py to
count parameters and FLOPs; not registered for training.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from googlenet_jax.models.googlenet import Conv, Dense, global_average_pool, pad


def max_pool(x: jnp.ndarray, size: int, stride: int) -> jnp.ndarray:
  """Unpadded max-pool, as PyTorch's nn.MaxPool2d(size, stride)."""
  return nn.max_pool(x, (size, size), strides=(stride, stride))


def flatten(x: jnp.ndarray) -> jnp.ndarray:
  return x.reshape((x.shape[0], -1))


class DenseHead(nn.Module):
  """Flatten, 4096, dropout 0.5, 4096, dropout 0.5, num_classes (AlexNet, VGG)."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = flatten(x)
    for _ in range(2):
      x = nn.relu(Dense(4096)(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return Dense(self.num_classes)(x)


class AlexNet(nn.Module):
  """96 11x11/4, pool, 256 5x5, pool, 384, 384, 256 3x3, pool, dense head."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.relu(Conv(96, (11, 11), strides=(4, 4), padding=pad(1))(x))
    x = max_pool(x, 3, 2)
    x = nn.relu(Conv(256, (5, 5), padding=pad(2))(x))
    x = max_pool(x, 3, 2)
    for features in (384, 384, 256):
      x = nn.relu(Conv(features, (3, 3), padding=pad(1))(x))
    x = max_pool(x, 3, 2)
    return DenseHead(self.num_classes)(x, train)


class VGG(nn.Module):
  """VGG blocks of 3x3 convs, each closed by a 2x2/2 max-pool, then a dense head.

  Attributes:
    arch: (number of convs, channels) per block.
  """
  arch: Sequence[tuple[int, int]] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for num_convs, features in self.arch:
      for _ in range(num_convs):
        x = nn.relu(Conv(features, (3, 3), padding=pad(1))(x))
      x = max_pool(x, 2, 2)
    return DenseHead(self.num_classes)(x, train)


def nin_block(x: jnp.ndarray, features: int, kernel: int, stride: int,
              padding: int) -> jnp.ndarray:
  """A conv, then two 1x1 convs (per-pixel dense layers), each with ReLU."""
  x = nn.relu(Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=pad(padding))(x))
  x = nn.relu(Conv(features, (1, 1))(x))
  return nn.relu(Conv(features, (1, 1))(x))


class NiN(nn.Module):
  """Four NiN blocks; the last has one channel per class, averaged globally."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = max_pool(nin_block(x, 96, 11, 4, 0), 3, 2)
    x = max_pool(nin_block(x, 256, 5, 1, 2), 3, 2)
    x = max_pool(nin_block(x, 384, 3, 1, 1), 3, 2)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return global_average_pool(nin_block(x, self.num_classes, 3, 1, 1))
