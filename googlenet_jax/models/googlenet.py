"""GoogLeNet as in Dive into Deep Learning, "Multi-Branch Networks (GoogLeNet)".

Images are NHWC. Every padding is written out and symmetric, as in the chapter's
PyTorch code: Flax's 'SAME' pads strided ops asymmetrically ((2, 3) for the 7x7/2
stem, (0, 1) for a 3x3/2 pool), which keeps the shapes but changes the numbers.

`norm=True` puts BatchNorm after every convolution, before its ReLU, as
BN-Inception (Ioffe & Szegedy, 2015); the default is the chapter's network.
"""

import functools
import inspect
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from googlenet_jax.models import conv_lowering


def pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding of `size` on both spatial axes, as PyTorch's `padding=size`."""
  return ((size, size), (size, size))


# Xavier-uniform kernels and zero biases, as the chapter's `init_cnn`; computed as
# matmuls on a CPU (see conv_lowering), with the same parameters.
Conv = functools.partial(nn.Conv, kernel_init=nn.initializers.xavier_uniform(),
                         conv_general_dilated=conv_lowering.conv_general_dilated)
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform())
# Running averages are updated with momentum 0.9 (PyTorch's 0.1); axis_name makes
# the batch statistics those of the global batch inside the pmapped train step.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, axis_name='batch')


def max_pool_3x3(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """3x3 max-pool with padding 1 (padded with -inf, as PyTorch)."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad(1))


def global_average_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C), as the chapter's AdaptiveAvgPool2d((1, 1)) + Flatten."""
  return jnp.mean(x, axis=(1, 2))


def conv_layers(features: int, kernel: int, norm: bool, stride: int = 1,
                padding: int = 0) -> list[Callable]:
  """Conv (+ BatchNorm) + ReLU, as layers of a `Stage`."""
  conv = Conv(features, (kernel, kernel), strides=(stride, stride),
              padding=pad(padding))
  return [conv, BatchNorm(), nn.relu] if norm else [conv, nn.relu]


class Stage(nn.Module):
  """`nn.Sequential` that hands `train` on to the layers that need it.

  Its layers are named layers_0, layers_1, ... as in `nn.Sequential`.
  """
  layers: Sequence[Callable]

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for layer in self.layers:
      if isinstance(layer, nn.BatchNorm):
        x = layer(x, use_running_average=not train)
      elif 'train' in inspect.signature(layer).parameters:
        x = layer(x, train=train)
      else:
        x = layer(x)
    return x


class Inception(nn.Module):
  """Four parallel branches concatenated on the channel axis; H and W unchanged.

  Attributes:
    c1: channels of branch 1, a 1x1 conv.
    c2: (1x1 reduce, 3x3) channels of branch 2.
    c3: (1x1 reduce, 5x5) channels of branch 3.
    c4: channels of branch 4, a 1x1 conv after a 3x3/1 max-pool.
    norm: BatchNorm after every conv.
  """
  c1: int
  c2: Sequence[int]
  c3: Sequence[int]
  c4: int
  norm: bool = False

  def conv(self, x: jnp.ndarray, features: int, kernel: int, train: bool,
           padding: int = 0) -> jnp.ndarray:
    x = Conv(features, (kernel, kernel), padding=pad(padding))(x)
    if self.norm:
      x = BatchNorm(use_running_average=not train)(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    b1 = self.conv(x, self.c1, 1, train)
    b2 = self.conv(x, self.c2[0], 1, train)
    b2 = self.conv(b2, self.c2[1], 3, train, padding=1)
    b3 = self.conv(x, self.c3[0], 1, train)
    b3 = self.conv(b3, self.c3[1], 5, train, padding=2)
    b4 = self.conv(max_pool_3x3(x, stride=1), self.c4, 1, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
  """The chapter's GoogLeNet: stem b1-b2, body b3-b5 (9 Inception blocks), head.

  At 96x96 the blocks give (N,24,24,64), (N,12,12,192), (N,6,6,480),
  (N,3,3,832), (N,1024) and (N,num_classes) logits.

  Attributes:
    num_classes: outputs of the head.
    norm: BatchNorm after every conv (BN-Inception).
    block: the Inception block class; `ResidualInception` makes Inception-ResNet.
  """
  num_classes: int = 10
  norm: bool = False
  block: Any = Inception

  def setup(self):
    pool = functools.partial(max_pool_3x3, stride=2)
    inception = functools.partial(self.block, norm=self.norm)
    self.b1 = Stage(self.b1_layers())
    self.b2 = Stage([*conv_layers(64, 1, self.norm),
                     *conv_layers(192, 3, self.norm, padding=1), pool])
    self.b3 = Stage([
        inception(64, (96, 128), (16, 32), 32),
        inception(128, (128, 192), (32, 96), 64), pool])
    self.b4 = Stage([
        inception(192, (96, 208), (16, 48), 64),
        inception(160, (112, 224), (24, 64), 64),
        inception(128, (128, 256), (24, 64), 64),
        inception(112, (144, 288), (32, 64), 64),
        inception(256, (160, 320), (32, 128), 128), pool])
    self.b5 = Stage([
        inception(256, (160, 320), (32, 128), 128),
        inception(384, (192, 384), (48, 128), 128),
        global_average_pool])
    self.head = Dense(self.num_classes)

  def b1_layers(self) -> list[Callable]:
    """7x7/2 conv and 3x3/2 max-pool: 96x96 -> 24x24."""
    return [*conv_layers(64, 7, self.norm, stride=2, padding=3),
            functools.partial(max_pool_3x3, stride=2)]

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage in (self.b1, self.b2, self.b3, self.b4, self.b5):
      x = stage(x, train=train)
    return self.head(x)
