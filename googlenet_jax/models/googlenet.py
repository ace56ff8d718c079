"""GoogLeNet as in Dive into Deep Learning, "Multi-Branch Networks (GoogLeNet)".

Images are NHWC. Every padding is symmetric, as in the chapter's PyTorch code:
Flax's 'SAME' pads strided ops asymmetrically ((2, 3) for the 7x7/2 stem, (0, 1)
for a 3x3/2 pool), which keeps the shapes but changes the numbers.

`norm=True` puts BatchNorm after every convolution, before its ReLU, as
BN-Inception (Ioffe & Szegedy, 2015); the default is the chapter's network.
`conv` is the convolution module and `max_pool` the max-pool function
(`train_state.create_model` chooses how both are computed, see conv_lowering),
`dtype` the dtype the layers compute in (the parameters are float32 whatever
all three are), and `axis_name` the device axis BatchNorm averages over.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any

# Xavier-uniform kernels, as the chapter's `init_cnn`, and zero biases: the chapter
# keeps PyTorch's default biases, uniform in +-1/sqrt(fan_in) (docs/design.md).
Conv = functools.partial(nn.Conv, kernel_init=nn.initializers.xavier_uniform())
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform())
# Running averages are updated with momentum 0.9 (PyTorch's 0.1).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9)


def pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding of `size` on both spatial axes, as PyTorch's `padding=size`."""
  return ((size, size), (size, size))


def max_pool_3x3(x: jnp.ndarray, stride: int,
                 max_pool: Callable = nn.max_pool) -> jnp.ndarray:
  """3x3 max-pool with padding 1 (padded with -inf, as PyTorch) by `max_pool`."""
  return max_pool(x, (3, 3), strides=(stride, stride), padding=pad(1))


def global_average_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C), as the chapter's AdaptiveAvgPool2d((1, 1)) + Flatten."""
  return jnp.mean(x, axis=(1, 2))


class ConvBlock(nn.Module):
  """Conv, then BatchNorm if `norm`, then ReLU: the unit every network here uses.

  Attributes:
    features: output channels.
    kernel_size: k for a k x k kernel, or (kh, kw).
    strides: the stride on both axes.
    padded: pad k // 2 on each side (PyTorch's `padding=k // 2`, which keeps H
      and W at stride 1); False pads nothing.
    norm: BatchNorm after the conv.
    relu: ReLU at the end; False leaves a linear projection.
    conv: the convolution module.
    dtype: the dtype the conv and BatchNorm compute in.
    axis_name: the device axis over which BatchNorm's batch statistics are
      averaged in a pmapped train step, making them the global batch's; None
      keeps each device's own.
  """
  features: int
  kernel_size: int | tuple[int, int]
  strides: int = 1
  padded: bool = True
  norm: bool = False
  relu: bool = True
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    kernel = self.kernel_size
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    padding = tuple((k // 2, k // 2) for k in kernel) if self.padded else 'VALID'
    x = self.conv(self.features, kernel, strides=(self.strides, self.strides),
                  padding=padding, dtype=self.dtype)(x)
    if self.norm:
      # Training normalises with this batch's statistics and updates the
      # running averages; evaluation uses the running averages.
      x = BatchNorm(use_running_average=not train, dtype=self.dtype,
                    axis_name=self.axis_name)(x)
    return nn.relu(x) if self.relu else x


class Stage(nn.Module):
  """Layers applied in turn, as `nn.Sequential`; modules among them get `train`.

  Its layers are named layers_0, layers_1, ... as in `nn.Sequential`; plain
  functions (pools) take only the activations.
  """
  layers: Sequence[Callable]

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for layer in self.layers:
      x = layer(x, train) if isinstance(layer, nn.Module) else layer(x)
    return x


class Inception(nn.Module):
  """Four parallel branches concatenated on the channel axis; H and W unchanged.

  Attributes:
    c1: channels of branch 1, a 1x1 conv.
    c2: (1x1 reduce, 3x3) channels of branch 2.
    c3: (1x1 reduce, 5x5) channels of branch 3.
    c4: channels of branch 4, a 1x1 conv after a 3x3/1 max-pool.
    conv: the ConvBlock every conv is made with (BatchNorm, form, dtype).
    max_pool: the max-pool function, called as `nn.max_pool`.
  """
  c1: int
  c2: Sequence[int]
  c3: Sequence[int]
  c4: int
  conv: ModuleDef = ConvBlock
  max_pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = self.conv
    b1 = conv(self.c1, 1)(x, train)
    b2 = conv(self.c2[1], 3)(conv(self.c2[0], 1)(x, train), train)
    b3 = conv(self.c3[1], 5)(conv(self.c3[0], 1)(x, train), train)
    b4 = conv(self.c4, 1)(max_pool_3x3(x, 1, self.max_pool), train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


# The chapter's nine Inception blocks, (c1, c2, c3, c4) each: b3 has the first
# two, b4 the next five, b5 the last two.
BLOCKS = (
    (64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64),
    (192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64),
    (128, (128, 256), (24, 64), 64), (112, (144, 288), (32, 64), 64),
    (256, (160, 320), (32, 128), 128),
    (256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128))


class GoogLeNet(nn.Module):
  """The chapter's GoogLeNet: stem b1-b2, body b3-b5 (9 Inception blocks), head.

  At 96x96 the blocks give (N,24,24,64), (N,12,12,192), (N,6,6,480),
  (N,3,3,832), (N,1024) and (N,num_classes) logits.

  Attributes:
    num_classes: outputs of the head.
    norm: BatchNorm after every conv (BN-Inception).
    num_blocks: how many of the 9 Inception blocks, from the first, the body
      keeps (each stage's max-pool stays); fewer make a shallower network for
      tests of the machinery around it, with the chapter's parameter names.
    block: the Inception block class; `ResidualInception` makes Inception-ResNet.
    conv: the convolution module of every conv.
    max_pool: the max-pool function of every max-pool, called as `nn.max_pool`.
    dtype: the dtype every layer computes in.
    axis_name: the device axis of BatchNorm's batch statistics (see ConvBlock).
  """
  num_classes: int = 10
  norm: bool = False
  num_blocks: int = 9
  block: ModuleDef = Inception
  conv: ModuleDef = Conv
  max_pool: Callable = nn.max_pool
  dtype: Any = jnp.float32
  axis_name: str | None = None

  def setup(self):
    conv = functools.partial(ConvBlock, norm=self.norm, conv=self.conv,
                             dtype=self.dtype, axis_name=self.axis_name)
    inception = functools.partial(self.block, conv=conv, max_pool=self.max_pool)
    pool = functools.partial(max_pool_3x3, stride=2, max_pool=self.max_pool)
    self.b1 = Stage(self.stem(conv, pool))
    self.b2 = Stage([conv(64, 1), conv(192, 3), pool])
    blocks = [inception(*channels) for channels in BLOCKS[:self.num_blocks]]
    self.b3 = Stage(blocks[0:2] + [pool])
    self.b4 = Stage(blocks[2:7] + [pool])
    self.b5 = Stage(blocks[7:9] + [global_average_pool])
    self.head = Dense(self.num_classes, dtype=self.dtype)

  def stem(self, conv: ModuleDef, pool: Callable) -> list[Callable]:
    """b1: 7x7/2 conv and 3x3/2 max-pool `pool`, 96x96 -> 24x24."""
    return [conv(64, 7, strides=2), pool]

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage in (self.b1, self.b2, self.b3, self.b4, self.b5):
      x = stage(x, train=train)
    return self.head(x)
