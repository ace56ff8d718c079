"""--largest_batch: the largest per-chip batch, a power of two, whose train step fits.

A search by compiling. A chip's memory grows about linearly with the batch
until XLA starts to rematerialise activations to fit (TPUs): the report's
compile and one at 16 times its per-chip batch give the line, which predicts a
power of two that fits. Compiling there confirms it (or halves it until one
fits), and compiling twice as many shows whether a larger one fits too. Large
TPU compiles take minutes each.
"""

import math
from typing import Callable

from googlenet_jax.errors import UserError
from googlenet_jax.tools.accelerators import Accelerator

# measure(per_chip_batch) compiles the train step at that per-chip batch:
# {'per_chip_batch_size', 'needed_bytes' (None if XLA did not say), 'fits', 'compile_s'}.
Measure = Callable[[int], dict]


def find(report: dict, measure: Measure, accelerator: Accelerator) -> dict:
  """The largest per-chip batch that fits, starting from the report's train step."""
  first = {'per_chip_batch_size': report['info']['per_chip_batch_size'],
           'needed_bytes': report['train']['memory_per_chip']['needed_bytes'],
           'fits': report['train']['memory_per_chip']['fits'],
           'compile_s': report['train']['compile_s']}
  result = search(first, measure, accelerator.chip.usable_bytes, accelerator.name)
  return {**result, 'batch_size': result['per_chip_batch_size'] * accelerator.chips,
          'hbm_bytes': accelerator.chip.hbm_bytes}


def search(first: dict, measure: Measure, usable_bytes: int, name: str) -> dict:
  """The largest power of two per chip that fits, from `first`'s compile.

  `usable_bytes`, what a step may take of a chip's memory, places the line's
  first guess.

  Returns {'per_chip_batch_size', 'needed_bytes', 'linear_bytes_per_image',
  'linear_fixed_bytes', 'compiles': every measurement, in order}.
  """
  compiles = [first]

  def at(per_chip: int) -> dict:
    for done in compiles:
      if done['per_chip_batch_size'] == per_chip:
        return done
    compiles.append(measure(per_chip))
    return compiles[-1]

  second = at(16 * first['per_chip_batch_size'])
  if second['needed_bytes'] is None:  # Out of memory, and XLA did not say by how much.
    slope = fixed = None
    guess = second['per_chip_batch_size'] // 2
  else:
    slope = ((second['needed_bytes'] - first['needed_bytes'])
             / (second['per_chip_batch_size'] - first['per_chip_batch_size']))
    fixed = first['needed_bytes'] - slope * first['per_chip_batch_size']
    guess = 2 ** int(math.log2(max(1, (usable_bytes - fixed) / slope)))
  while not at(guess)['fits']:
    if guess == 1:
      raise UserError(f'The train step does not fit on {name} even at one image per chip.')
    guess //= 2
  while at(2 * guess)['fits']:
    guess *= 2
  return {'per_chip_batch_size': guess, 'needed_bytes': at(guess)['needed_bytes'],
          'linear_bytes_per_image': slope, 'linear_fixed_bytes': fixed,
          'compiles': compiles}
