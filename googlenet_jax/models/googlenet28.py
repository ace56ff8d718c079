"""The chapter's GoogLeNet (with BatchNorm) for native 28x28 Fashion-MNIST.

At 28x28 the chapter's stem (7x7/2 conv, then two 3x3/2 max-pools in b1 and b2)
leaves 7x7 for b3 and 1x1 by b4: the last Inception blocks see one pixel, their
3x3 and 5x5 branches see only padding, and the last two max-pools do nothing.
Here b1 is a 3x3/1 conv and a 3x3/2 max-pool, 28 -> 14, so b2 gives 7x7 and
the body works on 7x7, 4x4 and 2x2: about the grid the chapter's network has at
96x96 (12x12, 6x6, 3x3), with no upsampling of the images. b2-b5 and the head
are the chapter's, channels unchanged.
"""

from typing import Callable

from googlenet_jax.models.googlenet import GoogLeNet, ModuleDef


class GoogLeNet28(GoogLeNet):
  """GoogLeNet with a 3x3/1 stem conv: 28x28 -> b1 (14,14,64) -> ... -> (2,2,832)."""

  def stem(self, conv: ModuleDef, pool: Callable) -> list[Callable]:
    """b1: 3x3/1 conv and 3x3/2 max-pool `pool`, 28x28 -> 14x14."""
    return [conv(64, 3), pool]
