"""The models, as a table: `config.model` names a row of `MODELS`.

A new model is one file in this folder and one row below. Its constructor takes
the keyword arguments of `ModelConstructor`, and `create` refuses one that does
not, so that no model silently loses the CPU's convolutions or BatchNorm's
device axis.
"""

import dataclasses
import functools
import inspect
from typing import Any, Callable, Protocol

import flax.linen as nn

from googlenet_jax.errors import UserError
from googlenet_jax.models.googlenet import ConvBlock, GoogLeNet, Inception
from googlenet_jax.models.googlenet28 import GoogLeNet28
from googlenet_jax.models.inception_resnet import InceptionResNet, ResidualInception
from googlenet_jax.models.inception_v3 import InceptionV3


class ModelConstructor(Protocol):
  """What every model of the table is built with; each argument has a default."""

  def __call__(self, *, num_classes: int, conv: Any, max_pool: Callable, dtype: Any,
               axis_name: str | None) -> nn.Module:
    """A Flax module whose `__call__(images, train=False)` returns logits.

    Args:
      num_classes: outputs of the head.
      conv: the module every convolution is made with (`nn.Conv`'s signature).
      max_pool: the function every max-pool calls (`nn.max_pool`'s signature).
      dtype: the dtype the layers compute in; parameters stay float32.
      axis_name: the device axis over which BatchNorm averages its statistics.
    """


CONSTRUCTOR_ARGUMENTS = tuple(
    inspect.signature(ModelConstructor.__call__).parameters)[1:]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A row of the table."""
  constructor: ModelConstructor
  # The smallest image_size at which every layer still has H, W >= 1 (checked by
  # summary.smallest_image_size in tests/test_variants.py).
  min_image_size: int = 1
  test_only: bool = False  # The tests' own: --mode=compare leaves it out.


# Symmetric padding maps H to ceil(H/2) at each stride-2 conv or pool of the
# GoogLeNets, so even 1x1 runs; Inception-v3's unpadded stem and reductions need 43.
MODELS = {
    'googlenet': ModelSpec(GoogLeNet),  # The chapter's network.
    'googlenet_bn': ModelSpec(functools.partial(GoogLeNet, norm=True)),  # BN-Inception.
    # The chapter's network with its first Inception block only: the tests of
    # training's machinery (checkpoints, hosts, faults) compile it in seconds.
    'googlenet_1block': ModelSpec(functools.partial(GoogLeNet, num_blocks=1),
                                  test_only=True),
    'googlenet28': ModelSpec(functools.partial(GoogLeNet28, norm=True)),  # Native 28x28.
    'inception_resnet': ModelSpec(InceptionResNet),
    'inception_v3': ModelSpec(InceptionV3, min_image_size=43),  # Adapted to 96x96.
    # The paper's stem, for 299x299 (ImageNet): the blocks on 35x35, 17x17, 8x8.
    'inception_v3_299': ModelSpec(functools.partial(InceptionV3, stem_pool=True),
                                  min_image_size=75),
}


def create(name: str, **arguments) -> nn.Module:
  """The model `name` of `MODELS`, built with `arguments` (those of ModelConstructor).

  Raises:
    UserError: the name is not in the table, or its constructor does not take
      every argument of `ModelConstructor`.
  """
  if name not in MODELS:
    raise UserError(f'Unknown model {name!r}: choose one of {", ".join(sorted(MODELS))} '
                    '(--config.model=NAME).')
  constructor = MODELS[name].constructor
  taken = inspect.signature(constructor).parameters
  missing = [argument for argument in CONSTRUCTOR_ARGUMENTS if argument not in taken]
  if missing:
    raise UserError(f'Model {name!r} does not take {", ".join(missing)}: every model '
                    'takes the arguments of models.ModelConstructor (see '
                    'googlenet_jax/models/__init__.py).')
  return constructor(**arguments)
