"""Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception Architecture").

What changes from the chapter's Inception block:
- `InceptionA` (the paper's Figure 5): the 5x5 branch becomes two 3x3 convs, the
  same receptive field for 18/25 of the multiply-adds.
- `InceptionB` (Figure 6): n x n factorised into 1 x n then n x 1 (n = 7).
- `InceptionC` (Figure 7): the 3x3s end in parallel 1x3 and 3x1 convs, widening
  the output on the coarsest grid.
- `ReductionA`, `ReductionB` (Figure 10): the grid is halved by stride-2 convs in
  parallel with a stride-2 max-pool, not by a pool alone, so no information is
  dropped before it has been expanded into more channels.
- BatchNorm after every conv, before its ReLU; average pools in the pool branch.

Channel numbers are the paper's (as in torchvision's inception_v3), without the
auxiliary classifier. By default the body is adapted to 96x96: the paper's 299x299
stem has a second 3x3/2 max-pool, dropped here so the blocks work on 20x20, 9x9 and
4x4 grids; `stem_pool=True` (the model 'inception_v3_299') keeps it, for the paper's
35x35, 17x17 and 8x8 at 299x299. As in the paper, the stem and the reductions use
unpadded convs; every other conv pads symmetrically to keep H and W.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from googlenet_jax.models.googlenet import (
    Conv, ConvBlock, Dense, ModuleDef, Stage, global_average_pool)


def avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
  """3x3/1 average pool, padded to keep H and W."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)))


def max_pool_3x3_valid(x: jnp.ndarray, max_pool: Callable = nn.max_pool) -> jnp.ndarray:
  """3x3/2 max-pool without padding, as the paper's grid reductions, by `max_pool`."""
  return max_pool(x, (3, 3), strides=(2, 2), padding=((0, 0), (0, 0)))


class InceptionA(nn.Module):
  """1x1 | 1x1, 3x3 | 1x1, 3x3, 3x3 (the factorised 5x5) | avg-pool, 1x1."""
  pool_features: int
  conv: ModuleDef = ConvBlock

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = self.conv
    b1 = conv(64, 1)(x, train)
    b2 = conv(48, 1)(x, train)
    b2 = conv(64, 3)(b2, train)
    b3 = conv(64, 1)(x, train)
    b3 = conv(96, 3)(b3, train)
    b3 = conv(96, 3)(b3, train)
    b4 = conv(self.pool_features, 1)(avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class ReductionA(nn.Module):
  """Halves the grid: 3x3/2 | 1x1, 3x3, 3x3/2 | max-pool 3x3/2; 288 -> 768 channels."""

  conv: ModuleDef = ConvBlock
  max_pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = self.conv
    b1 = conv(384, 3, strides=2, padded=False)(x, train)
    b2 = conv(64, 1)(x, train)
    b2 = conv(96, 3)(b2, train)
    b2 = conv(96, 3, strides=2, padded=False)(b2, train)
    return jnp.concatenate([b1, b2, max_pool_3x3_valid(x, self.max_pool)], axis=-1)


class InceptionB(nn.Module):
  """The n x n convs factorised into 1 x n and n x 1 (n = 7); 768 channels out.

  Attributes:
    c7: channels inside the factorised branches.
  """
  c7: int
  n: int = 7
  conv: ModuleDef = ConvBlock

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv, n = self.conv, self.n
    b1 = conv(192, 1)(x, train)
    b2 = conv(self.c7, 1)(x, train)
    b2 = conv(self.c7, (1, n))(b2, train)
    b2 = conv(192, (n, 1))(b2, train)
    b3 = conv(self.c7, 1)(x, train)
    b3 = conv(self.c7, (n, 1))(b3, train)
    b3 = conv(self.c7, (1, n))(b3, train)
    b3 = conv(self.c7, (n, 1))(b3, train)
    b3 = conv(192, (1, n))(b3, train)
    b4 = conv(192, 1)(avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class ReductionB(nn.Module):
  """Halves the grid: 1x1, 3x3/2 | 1x1, 1x7, 7x1, 3x3/2 | max-pool; 768 -> 1280."""

  conv: ModuleDef = ConvBlock
  max_pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = self.conv
    b1 = conv(192, 1)(x, train)
    b1 = conv(320, 3, strides=2, padded=False)(b1, train)
    b2 = conv(192, 1)(x, train)
    b2 = conv(192, (1, 7))(b2, train)
    b2 = conv(192, (7, 1))(b2, train)
    b2 = conv(192, 3, strides=2, padded=False)(b2, train)
    return jnp.concatenate([b1, b2, max_pool_3x3_valid(x, self.max_pool)], axis=-1)


class InceptionC(nn.Module):
  """Wide branches for the coarsest grid: 3x3s end in parallel 1x3 and 3x1; 2048 out."""

  conv: ModuleDef = ConvBlock

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = self.conv
    b1 = conv(320, 1)(x, train)
    b2 = conv(384, 1)(x, train)
    b2 = jnp.concatenate([conv(384, (1, 3))(b2, train),
                          conv(384, (3, 1))(b2, train)], axis=-1)
    b3 = conv(448, 1)(x, train)
    b3 = conv(384, 3)(b3, train)
    b3 = jnp.concatenate([conv(384, (1, 3))(b3, train),
                          conv(384, (3, 1))(b3, train)], axis=-1)
    b4 = conv(192, 1)(avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionV3(nn.Module):
  """Stem b1-b2, body b3-b5 (3 A, reduction, 4 B, reduction, 2 C blocks), head.

  At 96x96 the blocks give (N,22,22,64), (N,20,20,192), (N,20,20,288),
  (N,9,9,768), (N,2048) and (N,num_classes) logits.

  Attributes:
    num_classes: outputs of the head.
    conv: the convolution module of every conv.
    max_pool: the max-pool function of every max-pool, called as `nn.max_pool`.
    dtype: the dtype every layer computes in.
    axis_name: the device axis of BatchNorm's batch statistics (see ConvBlock).
    stem_pool: end the stem with the paper's second 3x3/2 max-pool (for 299x299).
  """
  num_classes: int = 10
  conv: ModuleDef = Conv
  max_pool: Callable = nn.max_pool
  dtype: Any = jnp.float32
  axis_name: str | None = None
  stem_pool: bool = False

  def setup(self):
    conv = functools.partial(ConvBlock, norm=True, conv=self.conv, dtype=self.dtype,
                             axis_name=self.axis_name)
    valid = functools.partial(conv, padded=False)  # The stem's unpadded convs.
    pool = functools.partial(max_pool_3x3_valid, max_pool=self.max_pool)
    self.b1 = Stage([valid(32, 3, strides=2), valid(32, 3), conv(64, 3), pool])
    self.b2 = Stage([conv(80, 1), valid(192, 3), *([pool] if self.stem_pool else [])])
    self.b3 = Stage([InceptionA(pool, conv=conv) for pool in (32, 64, 64)])
    self.b4 = Stage([ReductionA(conv=conv, max_pool=self.max_pool),
                     *[InceptionB(c7, conv=conv) for c7 in (128, 160, 160, 192)]])
    self.b5 = Stage([ReductionB(conv=conv, max_pool=self.max_pool), InceptionC(conv=conv), InceptionC(conv=conv),
                     global_average_pool])
    self.head = Dense(self.num_classes, dtype=self.dtype)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage in (self.b1, self.b2, self.b3, self.b4, self.b5):
      x = stage(x, train=train)
    return self.head(x)
