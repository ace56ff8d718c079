"""A/B of one config field: the train step with each value, taking turns in one process.

  python -m benchmarks.ab --config=configs/fmnist96.py --field=conv_lowering \
      --values=xla,matmul --batch_size=128 --warmup=2 --steps=5
  python -m benchmarks.ab --field=dtype --values=float32,bfloat16 \
      --batch_size=128 --warmup=1 --steps=3

Separate runs of benchmarks/benchmark.py on a busy, shared machine see
different loads. Here each value gets its own model, train state and pmapped
step, built from a copy of the config with the field set, and the values'
steps alternate step by step on synthetic device-resident batches, so each sees
the same load. Prints images/s per value and its ratio to the first value's.
Takes benchmark.py's --config (and its --config.x= overrides), --batch_size,
--warmup and --steps.
"""

import itertools
import os

from absl import app
from absl import flags
import jax
import ml_collections

from benchmarks import benchmark
from googlenet_jax import experiment
from googlenet_jax import sharding
from googlenet_jax.runtime import compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string('field', None, 'The config field to vary, e.g. dtype.')
flags.DEFINE_list('values', None, "The field's values; the first is the baseline.")
flags.mark_flags_as_required(['field', 'values'])


def parse_value(text: str, current):
  """`text` as a value of the type of `current`, the field's value in the config."""
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false'):
      raise app.UsageError(f'{text!r} is not a bool: give true or false.')
    return text.lower() == 'true'
  return type(current)(text)


def config_with(config: ml_collections.ConfigDict, field: str,
                value) -> ml_collections.ConfigDict:
  """A checked copy of `config` with `field` set to `value`."""
  config = config.copy_and_resolve_references()
  config[field] = value
  return benchmark.checked(config)


def variant(config: ml_collections.ConfigDict):
  """The pmapped train step, a replicated initial state and batches of `config`."""
  built = experiment.build(config, load_data=False)
  return (built.p_train_step, sharding.replicate(built.initial_state()),
          itertools.repeat(benchmark.synthetic_batch(config.batch_size)))


def format_table(rates: dict[str, dict]) -> str:
  """Images/s of each value and its ratio to the first value's, one row each."""
  first = next(iter(rates.values()))['median']
  cells = {name: benchmark.format_rate(rate) for name, rate in rates.items()}
  width = max(map(len, cells)) + 2
  rate_width = max(len('train images/s'), *map(len, cells.values())) + 2
  rows = [f'{"":<{width}}{"train images/s":<{rate_width}}/ first']
  for name, rate in rates.items():
    rows.append(f'{name:<{width}}{cells[name]:<{rate_width}}'
                f'{rate["median"] / first:.2f}')
  return '\n'.join(rows)


def main(argv):
  config = benchmark.config_from_flags(argv)
  if FLAGS.field not in config:
    raise app.UsageError(f'--field: the config has no field {FLAGS.field!r}.')
  if len(set(FLAGS.values)) != len(FLAGS.values):
    raise app.UsageError('--values: each value once.')
  compilation_cache.enable(config.compilation_cache_dir)
  load_at_start = os.getloadavg()[0]
  configs = {f'{FLAGS.field}={v}': config_with(
      config, FLAGS.field, parse_value(v, config[FLAGS.field])) for v in FLAGS.values}
  step_fns, states, feeds = {}, {}, {}
  for name, value_config in configs.items():
    step_fns[name], states[name], feeds[name] = variant(value_config)
  _, seconds = benchmark.take_turns(step_fns, states, feeds, FLAGS.warmup,
                                    FLAGS.steps)
  rates = {name: benchmark.throughput(seconds[name], configs[name].batch_size)
           for name in configs}
  print(format_table(rates))
  print(f'batch {config.batch_size}, {config.image_size}x{config.image_size}, '
        f'{jax.devices()[0].device_kind} x{jax.local_device_count()}, load average '
        f'{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end')


if __name__ == '__main__':
  app.run(main)
