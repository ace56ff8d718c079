"""Speed of the host input path alone: memory to batches on the devices.

Run from the repository root (a script, not a test):

  python -m benchmarks.pipeline --config=configs/fmnist96.py --batch_size=128 \
      --num_batches=2000 --repeats=5

Prints how long `input_pipeline.load_sources` takes (the one-off read into
memory), then the images/s of `train_batches` and `prefetch_to_device` as the
training loop uses them, with no step running. `--config.x=` overrides config
fields; XLA_FLAGS=--xla_force_host_platform_device_count=8 feeds 8 CPU devices.
"""

import itertools
import os
import statistics
import time
from typing import Iterator

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from googlenet_jax import input_pipeline

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs',
                               'fmnist96.py')
# Untimed batches before each timed run: the first transfers set up jax's path.
_WARMUP_BATCHES = 20
FLAGS = flags.FLAGS


def pipeline_images_per_sec(sources, config, num_batches: int) -> float:
  """Images/s from the in-memory training source to batches on the devices.

  Times `train_batches` (epoch after epoch, as many as `num_batches` needs)
  through `prefetch_to_device`, until the last batch is on the devices.

  Args:
    sources: as `input_pipeline.load_sources` returns them.
    config: reads `batch_size` and `seed`.
    num_batches: how many batches to time.
  """
  put_on_devices(sources['train'], config, _WARMUP_BATCHES)
  start = time.perf_counter()
  put_on_devices(sources['train'], config, num_batches)
  return num_batches * config.batch_size / (time.perf_counter() - start)


def put_on_devices(source, config, num_batches: int) -> None:
  """Puts `num_batches` training batches on the devices; returns when done."""
  batches = itertools.islice(train_batches(source, config), num_batches)
  for batch in input_pipeline.prefetch_to_device(batches):
    pass
  jax.block_until_ready(batch)


def train_batches(source, config) -> Iterator:
  """The training loop's batches for this process, epoch after epoch."""
  for epoch in itertools.count():
    yield from input_pipeline.train_batches(
        source, global_batch_size=config.batch_size, seed=config.seed,
        epoch=epoch, process_index=0, process_count=1,
        num_local_devices=jax.local_device_count())


def define_flags() -> None:
  """The script's flags; not defined on import, as benchmark.py has its own."""
  config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                  'Config file (configs/*.py).')
  flags.DEFINE_integer('batch_size', None,
                       'Global training batch; default: config.batch_size.')
  flags.DEFINE_integer('num_batches', 2000, 'Batches in each timed run.')
  flags.DEFINE_integer('repeats', 5, 'Timed runs; the median is printed too.')
  flags.register_validator('num_batches', lambda n: n >= 1,
                           '--num_batches must be at least 1.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  start = time.perf_counter()
  sources = input_pipeline.load_sources(config)
  print(f'load_sources: {time.perf_counter() - start:.2f} s '
        f'({len(sources["train"])} train, {len(sources["test"])} test)')
  rates = []
  for _ in range(FLAGS.repeats):
    rates.append(pipeline_images_per_sec(sources, config, FLAGS.num_batches))
    print(f'  {rates[-1]:,.0f} images/s')
  print(f'pipeline images/s: median {statistics.median(rates):,.0f} '
        f'(batch {config.batch_size}, {FLAGS.num_batches} batches, '
        f'{jax.local_device_count()} x {jax.devices()[0].device_kind}, '
        f'load average {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
  define_flags()
  app.run(main)
