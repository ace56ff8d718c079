"""GoogLeNet as in Dive into Deep Learning, "Multi-Branch Networks (GoogLeNet)".

Images are NHWC. Every padding is written out and symmetric, as in the chapter's
PyTorch code: Flax's 'SAME' pads strided ops asymmetrically ((2, 3) for the 7x7/2
stem, (0, 1) for a 3x3/2 pool), which keeps the shapes but changes the numbers.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding of `size` on both spatial axes, as PyTorch's `padding=size`."""
  return ((size, size), (size, size))


# Xavier-uniform kernels and zero biases, as the chapter's `init_cnn`.
Conv = functools.partial(nn.Conv, kernel_init=nn.initializers.xavier_uniform())
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform())


def max_pool_3x3(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """3x3 max-pool with padding 1 (padded with -inf, as PyTorch)."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad(1))


def global_average_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C), as the chapter's AdaptiveAvgPool2d((1, 1)) + Flatten."""
  return jnp.mean(x, axis=(1, 2))


class Inception(nn.Module):
  """Four parallel branches concatenated on the channel axis; H and W unchanged.

  Attributes:
    c1: channels of branch 1, a 1x1 conv.
    c2: (1x1 reduce, 3x3) channels of branch 2.
    c3: (1x1 reduce, 5x5) channels of branch 3.
    c4: channels of branch 4, a 1x1 conv after a 3x3/1 max-pool.
  """
  c1: int
  c2: Sequence[int]
  c3: Sequence[int]
  c4: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b1 = nn.relu(Conv(self.c1, (1, 1))(x))
    b2 = nn.relu(Conv(self.c2[0], (1, 1))(x))
    b2 = nn.relu(Conv(self.c2[1], (3, 3), padding=pad(1))(b2))
    b3 = nn.relu(Conv(self.c3[0], (1, 1))(x))
    b3 = nn.relu(Conv(self.c3[1], (5, 5), padding=pad(2))(b3))
    b4 = nn.relu(Conv(self.c4, (1, 1))(max_pool_3x3(x, stride=1)))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
  """The chapter's GoogLeNet: stem b1-b2, body b3-b5 (9 Inception blocks), head.

  At 96x96 the blocks give (N,24,24,64), (N,12,12,192), (N,6,6,480),
  (N,3,3,832), (N,1024) and (N,num_classes) logits.
  """
  num_classes: int = 10

  def setup(self):
    pool = functools.partial(max_pool_3x3, stride=2)
    self.b1 = nn.Sequential([
        Conv(64, (7, 7), strides=(2, 2), padding=pad(3)), nn.relu, pool])
    self.b2 = nn.Sequential([
        Conv(64, (1, 1)), nn.relu,
        Conv(192, (3, 3), padding=pad(1)), nn.relu, pool])
    self.b3 = nn.Sequential([
        Inception(64, (96, 128), (16, 32), 32),
        Inception(128, (128, 192), (32, 96), 64), pool])
    self.b4 = nn.Sequential([
        Inception(192, (96, 208), (16, 48), 64),
        Inception(160, (112, 224), (24, 64), 64),
        Inception(128, (128, 256), (24, 64), 64),
        Inception(112, (144, 288), (32, 64), 64),
        Inception(256, (160, 320), (32, 128), 128), pool])
    self.b5 = nn.Sequential([
        Inception(256, (160, 320), (32, 128), 128),
        Inception(384, (192, 384), (48, 128), 128),
        global_average_pool])
    self.head = Dense(self.num_classes)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # The chapter's network has no dropout or BatchNorm.
    for stage in (self.b1, self.b2, self.b3, self.b4, self.b5, self.head):
      x = stage(x)
    return x
