"""Per-block output shapes, parameters and FLOPs of a model (`--mode=summary`).

FLOPs come from XLA's cost analysis of each block's forward pass on one image;
a multiply-add counts as two FLOPs.
"""

import functools
from typing import NamedTuple

import jax

from googlenet_jax import train_state
from googlenet_jax.models import conv_lowering


class BlockStats(NamedTuple):
  name: str
  output_shape: tuple[int, ...]
  params: int
  flops: float


def count_params(tree) -> int:
  """The number of numbers in `tree`, e.g. a model's params."""
  return sum(x.size for x in jax.tree.leaves(tree))


def xla_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` according to XLA's cost analysis of the lowered function.

  `args` may be `jax.ShapeDtypeStruct`s: nothing is compiled or computed. Give
  it models in the 'xla' convolution form: convolutions are then counted as
  convolutions, which skips the multiply-adds on padding.
  """
  cost = jax.jit(fn).lower(*args).cost_analysis()
  return float(cost.get('flops', 0.0))


def one_image(image_size: int, channels: int = 1) -> jax.ShapeDtypeStruct:
  """One float32 image_size x image_size image of `channels`."""
  return train_state.one_image((image_size, image_size, channels))


def abstract_variables(model, image_size: int, intermediates: bool = False,
                       channels: int = 1):
  """`model`'s variables for one image, as shapes only.

  With `intermediates`, they also hold every layer's output, under 'intermediates'.
  """
  init = functools.partial(model.init_with_output, capture_intermediates=intermediates)
  return jax.eval_shape(init, jax.random.key(0), one_image(image_size, channels))[1]


def block_stats(model, image_size: int, channels: int = 1) -> list[BlockStats]:
  """One BlockStats per top-level block of `model`, in call order, for one image.

  From shapes only (`jax.eval_shape`) and XLA's cost analysis: nothing runs.
  """
  inputs = one_image(image_size, channels)
  variables = abstract_variables(model, image_size, intermediates=True, channels=channels)
  blocks = {k: v['__call__'][0] for k, v in variables.pop('intermediates').items()
            if k != '__call__'}
  stats = []
  for name, output in blocks.items():
    apply_block = lambda variables, x, name=name: model.apply(
        variables, x, method=lambda module, x: getattr(module, name)(x))
    stats.append(BlockStats(name, output.shape,
                            count_params(variables['params'].get(name, {})),
                            xla_flops(apply_block, variables, inputs)))
    inputs = output
  return stats


def every_layer_has_pixels(model, image_size: int) -> bool:
  """Whether every layer's output keeps H, W >= 1 for image_size x image_size inputs.

  Shapes only (jax.eval_shape): nothing is computed. A layer whose window no
  longer fits its input fails to trace, which counts as False too.
  """
  try:
    variables = abstract_variables(model, image_size, intermediates=True)
  except (TypeError, ValueError, ZeroDivisionError):
    return False
  return all(min(x.shape[1:3]) >= 1
             for x in jax.tree.leaves(variables['intermediates']) if x.ndim == 4)


def smallest_image_size(model, largest: int = 299) -> int:
  """The smallest image size that `model` runs at, by bisection on [1, largest]."""
  low, high = 1, largest  # The answer lies in [low, high].
  while low < high:
    middle = (low + high) // 2
    if every_layer_has_pixels(model, middle):
      high = middle
    else:
      low = middle + 1
  return low


def format_table(stats: list[BlockStats]) -> str:
  """A plain-text table, ruled off from its header and its total row."""
  rule = '-' * 54
  lines = [f'{"block":<8}{"output shape":<20}{"parameters":>14}{"MFLOPs":>12}', rule]
  for s in stats:
    lines.append(f'{s.name:<8}{str(s.output_shape):<20}{s.params:>14,}'
                 f'{s.flops / 1e6:>12.1f}')
  lines += [rule, f'{"total":<28}{sum(s.params for s in stats):>14,}'
                  f'{sum(s.flops for s in stats) / 1e6:>12.1f}']
  return '\n'.join(lines)


def summary_table(model, name: str, image_shape: tuple[int, int, int]) -> str:
  """The summary of `model`, called `name`, on one image of `image_shape` (H = W).

  The model is counted in its 'xla' form, whichever it trains in: convolutions
  as convolutions, FLOPs without the matmul form's padding.
  """
  model = model.clone(conv=conv_lowering.conv_module('xla'),
                      max_pool=conv_lowering.max_pool('xla'))
  size, _, channels = image_shape
  return (f'{name} on one {size}x{size}x{channels} image (a multiply-add is 2 FLOPs):\n'
          + format_table(block_stats(model, size, channels)))
