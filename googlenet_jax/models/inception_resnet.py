"""Residual Inception blocks (Inception-ResNet, Szegedy et al., 2017) in GoogLeNet.

The block's concatenated branches go through a 1x1 linear projection (no ReLU,
so the residual can be negative), are scaled down (0.2: the paper found larger
residuals destabilise training) and added to the block input, then ReLU.

The chapter's blocks change the channel count (192 -> 256 -> 480, ...), so the
projection keeps the chapter's output channels and, where they differ from the
input's, the shortcut is a 1x1 conv (ResNet's projection shortcut) instead of
the identity.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from googlenet_jax.models.googlenet import ConvBlock, GoogLeNet, Inception, ModuleDef


class ResidualInception(nn.Module):
  """relu(shortcut(x) + scale * project(Inception(x))); H and W unchanged.

  Attributes:
    c1, c2, c3, c4: the Inception block's branch channels.
    conv: the ConvBlock of the branches; the projections are its conv alone.
    max_pool: the max-pool function of branch 4, called as `nn.max_pool`.
    scale: weight of the residual.
  """
  c1: int
  c2: Sequence[int]
  c3: Sequence[int]
  c4: int
  conv: ModuleDef = ConvBlock
  max_pool: Callable = nn.max_pool
  scale: float = 0.2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    branches = Inception(self.c1, self.c2, self.c3, self.c4, conv=self.conv,
                         max_pool=self.max_pool)(x, train)
    channels = branches.shape[-1]
    project = functools.partial(self.conv, channels, 1, norm=False, relu=False)
    residual = project()(branches)
    shortcut = x if x.shape[-1] == channels else project()(x)
    return nn.relu(shortcut + self.scale * residual)


# The chapter's GoogLeNet, BatchNorm on, with residual blocks.
InceptionResNet = functools.partial(GoogLeNet, norm=True, block=ResidualInception)
