"""Parameters and compute of the chapter's networks and the variants (`--mode=compare`).

The chapter's exercises 4 and 5: AlexNet, VGG-11 and NiN as D2L defines them,
the chapter's GoogLeNet and every model of `models.MODELS` but the tests' own,
each at 224x224 and 96x96 with one input channel and 10 classes. Multiply-adds
are half of XLA's FLOPs; XLA skips those that fall on padding, so padded convs
read a bit low.
"""

from typing import NamedTuple

from googlenet_jax import models
from googlenet_jax.models import classic
from googlenet_jax.tools import summary

IMAGE_SIZES = (224, 96)


class Cost(NamedTuple):
  name: str
  params: dict[int, int]  # By image size: AlexNet's and VGG's dense heads grow.
  macs: dict[int, float]  # Multiply-adds per image, by image size.
  min_image_size: int


def compared_models(num_classes: int = 10) -> dict[str, object]:
  """The classic networks, then every model of the table but the tests', by name."""
  return {'alexnet': classic.AlexNet(num_classes),
          'vgg11': classic.VGG(num_classes=num_classes),
          'nin': classic.NiN(num_classes),
          **{name: spec.constructor(num_classes=num_classes)
             for name, spec in models.MODELS.items() if not spec.test_only}}


def multiply_adds(model, image_size: int) -> float:
  """Multiply-adds of one inference forward pass, from XLA's cost analysis."""
  return summary.xla_flops(model.apply, summary.abstract_variables(model, image_size),
                           summary.one_image(image_size)) / 2


def model_cost(name: str, model) -> Cost:
  """Trainable parameters (not BatchNorm's running averages) and multiply-adds, by size."""
  params = {size: summary.count_params(summary.abstract_variables(model, size)['params'])
            for size in IMAGE_SIZES}
  return Cost(name, params,
              {size: multiply_adds(model, size) for size in IMAGE_SIZES},
              summary.smallest_image_size(model))


def format_table(costs: list[Cost]) -> str:
  """One line per model: parameters and G multiply-adds per size, min image size."""
  lines = [f'{"model":<18}'
           + ''.join(f'{f"params@{size}":>14}{f"GMACs@{size}":>11}'
                     for size in IMAGE_SIZES) + f'{"min size":>10}']
  for c in costs:
    lines.append(f'{c.name:<18}'
                 + ''.join(f'{c.params[size]:>14,}{c.macs[size] / 1e9:>11.3f}'
                           for size in IMAGE_SIZES) + f'{c.min_image_size:>10}')
  return '\n'.join(lines)


def comparison_table(num_classes: int) -> str:
  """The table for every compared model, each with `num_classes` outputs."""
  costs = [model_cost(name, model)
           for name, model in compared_models(num_classes).items()]
  return format_table(costs)
