"""Speed of the real training step: images/s, FLOP/s, input pipeline, eval, memory.

Run from the repository root (a script, not a test):

  python -m benchmarks.benchmark --config=configs/fmnist96.py --batch_size=128 \
      --dtype=float32 --warmup=2 --steps=5 --json_out=/tmp/bench.json

Everything is measured in one process, so the ratios compare like with like:
a matmul peak on this device, the pmapped train step of `googlenet_jax.train`
on synthetic device-resident batches and on the real Fashion-MNIST pipeline,
the pipeline alone, and the eval step. `--config.x=` overrides config fields.
"""

import itertools
import json
import os
import platform
import resource
import statistics
import time
from typing import Callable, Iterator

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags
import numpy as np

from googlenet_jax import input_pipeline
from googlenet_jax import train
from googlenet_jax.models import conv_lowering

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs',
                               'fmnist96.py')
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('batch_size', None,
                     'Global training batch; default: config.batch_size.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                  'Compute dtype; params and optimizer state stay float32.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps of each kind before the timed ones.')
flags.DEFINE_integer('steps', 5, 'Timed steps in each run.')
flags.DEFINE_integer('matmul_size', 4096, 'n of the n x n x n matmul peak.')
flags.DEFINE_bool('real_data', True, 'Also time the real Fashion-MNIST pipeline.')
flags.DEFINE_string('json_out', '', 'Where to write the results as JSON.')
# Host (numpy) and device-resident batches each compile the step once.
flags.register_validator('warmup', lambda n: n >= 1,
                         '--warmup must be at least 1: the first steps compile.')


def with_compute_dtype(state, dtype):
  """`state` whose apply_fn computes in `dtype` and returns float32.

  Float inputs and variables are cast to `dtype` inside the differentiated
  function, so gradients, params and optimizer state stay float32 (mixed
  precision); float outputs (logits, any updated statistics) come back float32.
  """
  apply_fn = state.apply_fn

  def cast(tree, to):
    return jax.tree.map(
        lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree)

  def cast_apply(variables, images, **kwargs):
    outputs = apply_fn(cast(variables, dtype), cast(images, dtype), **kwargs)
    return cast(outputs, jnp.float32)

  return state.replace(apply_fn=cast_apply)


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
  """Median FLOP/s of an n x n x n matmul in `dtype` on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def synthetic_batch(batch_size: int, with_mask: bool = False):
  """Random uint8 images and labels in pmap's layout, already on the devices."""
  num_devices = jax.local_device_count()
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.integers(0, 256, (num_devices, batch_size // num_devices,
                                     28, 28, 1), np.uint8),
      'label': rng.integers(0, 10, (num_devices, batch_size // num_devices),
                            np.int32),
  }
  if with_mask:
    batch['mask'] = np.ones(batch['label'].shape, bool)
  sharding = NamedSharding(Mesh(jax.local_devices(), (train.AXIS,)),
                           PartitionSpec(train.AXIS))
  return jax.device_put(batch, sharding)


def timed_steps(step: Callable, state, feeds: dict[str, Iterator],
                batch_size: int):
  """Warm-up, then timed steps that take turns over `feeds` (name -> batches).

  Taking turns step by step makes a busy, shared machine slow every feed
  alike, so their ratio holds. Each step reads its feed's next batch while it
  runs, as the training loop does.

  Returns:
    (state, {name: images/s stats}).
  """
  next_batch = {name: next(batches) for name, batches in feeds.items()}
  durations = {name: [] for name in feeds}
  for i in range(FLAGS.warmup + FLAGS.steps):
    for name, batches in feeds.items():
      start = time.perf_counter()
      state, metrics = step(state, next_batch[name])
      next_batch[name] = next(batches)
      jax.block_until_ready(metrics)
      if i >= FLAGS.warmup:
        durations[name].append(time.perf_counter() - start)
  return state, {name: throughput(d, batch_size) for name, d in durations.items()}


def alternate_steps(steps: dict[str, Callable], states: dict, batch,
                    batch_size: int) -> dict[str, dict[str, float]]:
  """Warm-up, then timed steps of every variant (name -> step, state) in turn.

  Taking turns step by step makes a busy machine slow every variant alike.
  `states` is updated in place; returns {name: images/s stats}.
  """
  durations = {name: [] for name in steps}
  for i in range(FLAGS.warmup + FLAGS.steps):
    for name, step in steps.items():
      start = time.perf_counter()
      states[name], metrics = step(states[name], batch)
      jax.block_until_ready(metrics)
      if i >= FLAGS.warmup:
        durations[name].append(time.perf_counter() - start)
  return {name: throughput(d, batch_size) for name, d in durations.items()}


def config_from_flags():
  """--config with --batch_size applied."""
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  return config


def throughput(durations: list[float], batch_size: int) -> dict[str, float]:
  """Median, min and max images/s over per-step durations."""
  rates = [batch_size / d for d in durations]
  return {'median': statistics.median(rates), 'min': min(rates),
          'max': max(rates), 'steps': len(rates)}


def timed_eval(p_eval_step, state, batch_size: int) -> dict[str, float]:
  """Images/s of the eval step on a device-resident batch, after warm-up."""
  feeds = {'eval': itertools.repeat(synthetic_batch(batch_size, with_mask=True))}
  _, stats = timed_steps(lambda s, b: (s, p_eval_step(s, b)), state, feeds,
                         batch_size)
  return stats['eval']


def pipeline_rate(batches: Iterator, batch_size: int, num_batches: int) -> float:
  """Images/s the host input pipeline alone produces."""
  start = time.perf_counter()
  for _ in itertools.islice(batches, num_batches):
    pass
  return num_batches * batch_size / (time.perf_counter() - start)


def real_batches(sources, config, epoch: int) -> Iterator:
  """The training loop's batches of one epoch."""
  return input_pipeline.train_batches(
      sources['train'], global_batch_size=config.batch_size, seed=config.seed,
      epoch=epoch, process_index=0, process_count=1,
      num_local_devices=jax.local_device_count())


def compile_train_step(p_train_step, state, batch) -> float:
  """Compiles the step (cached for the real calls); returns the seconds it took."""
  start = time.perf_counter()
  p_train_step.lower(state, batch).compile()
  return time.perf_counter() - start


def train_step_flops(config, state, batch) -> float:
  """XLA's FLOPs of the global train step, its convolutions counted as convolutions.

  The matmul form of the convolutions (config.conv_lowering, on a CPU) also
  multiplies the zero padding; counting the convolution form keeps FLOP/s
  comparable across forms, devices and with PyTorch.
  """
  with conv_lowering.using('xla'):
    p_train_step, _ = train.pmap_steps(config)
    return global_flops(p_train_step.lower(state, batch).compile())


def global_flops(compiled) -> float:
  """XLA's FLOPs of a compiled pmapped step, over all local devices."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # Older jax returned one dict per program.
    cost = cost[0]
  return float(cost['flops']) * jax.local_device_count()


def device_peak_memory() -> int | None:
  """Peak bytes in use on device 0, where the backend reports it (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get('peak_bytes_in_use') if stats else None


def measure(config) -> dict:
  """Every measurement, in one process, in the order of the table."""
  dtype = jnp.dtype(FLAGS.dtype)
  results = {'matmul_peak_flops': matmul_peak(FLAGS.matmul_size, dtype)}
  model = train.create_model(config)
  state = train.create_train_state(jax.random.key(config.seed), config, model)
  state = train.replicate(with_compute_dtype(state, dtype))
  p_train_step, p_eval_step = train.pmap_steps(config)
  batch = synthetic_batch(config.batch_size)

  start = time.perf_counter()
  results['compile_s'] = compile_train_step(p_train_step, state, batch)
  state, metrics = p_train_step(state, batch)
  jax.block_until_ready(metrics)
  results['time_to_first_step_s'] = time.perf_counter() - start
  results['flops'] = train_step_flops(config, state, batch)

  feeds = {'train_synthetic': itertools.repeat(batch)}
  if FLAGS.real_data:
    sources = input_pipeline.load_sources(config)
    feeds['train_real'] = real_batches(sources, config, epoch=0)
    results['pipeline_only'] = pipeline_rate(
        real_batches(sources, config, epoch=1), config.batch_size,
        FLAGS.warmup + FLAGS.steps)
  state, stats = timed_steps(p_train_step, state, feeds, config.batch_size)
  results.update(stats)
  results['achieved_flops_per_s'] = (
      results['flops'] * results['train_synthetic']['median'] / config.batch_size)
  results['eval'] = timed_eval(p_eval_step, state, config.eval_batch_size)
  results['host_peak_rss_bytes'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss * 1024
  results['device_peak_bytes'] = device_peak_memory()
  results['load_average_at_end'] = os.getloadavg()[0]
  return results


def describe(config) -> dict:
  """What was measured, where and when."""
  return {
      'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
      'device': str(jax.local_devices()[0].device_kind),
      'num_devices': jax.local_device_count(), 'host': platform.node(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'dtype': FLAGS.dtype,
      'convolutions': 'matmuls' if conv_lowering.wants_matmul_form() else 'lax.conv',
      'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
      'image_size': config.image_size, 'warmup': FLAGS.warmup,
      'steps': FLAGS.steps, 'load_average_at_start': os.getloadavg()[0],
  }


def format_table(info: dict, r: dict) -> str:
  """The results as one plain-text table."""
  rows = [
      ('device', f"{info['device']} x{info['num_devices']}, {info['dtype']}"),
      ('convolutions as', info['convolutions']),
      ('batch, image size', f"{info['batch_size']}, {info['image_size']}"),
      ('compile (s)', f"{r['compile_s']:.1f}"),
      ('time to first step (s)', f"{r['time_to_first_step_s']:.1f}"),
      ('train images/s, synthetic', format_rate(r['train_synthetic'])),
  ]
  if 'train_real' in r:
    rows += [
        ('train images/s, real data', format_rate(r['train_real'])),
        ('real / synthetic',
         f"{r['train_real']['median'] / r['train_synthetic']['median']:.3f}"),
        ('pipeline alone images/s', f"{r['pipeline_only']:.0f}"),
    ]
  rows += [
      ('eval images/s', format_rate(r['eval'])),
      ('GFLOP per train step', f"{r['flops'] / 1e9:.1f}"),  # Padding not counted.
      ('achieved GFLOP/s', f"{r['achieved_flops_per_s'] / 1e9:.1f}"),
      ('matmul peak GFLOP/s', f"{r['matmul_peak_flops'] / 1e9:.1f}"),
      ('% of matmul peak',
       f"{100 * r['achieved_flops_per_s'] / r['matmul_peak_flops']:.1f}"),
      ('host peak RSS (MiB)', f"{r['host_peak_rss_bytes'] / 2**20:.0f}"),
      ('device peak (MiB)', 'n/a' if r['device_peak_bytes'] is None
       else f"{r['device_peak_bytes'] / 2**20:.0f}"),
      # Other work on the machine slows every number above.
      ('load average, start/end', f"{info['load_average_at_start']:.1f} / "
       f"{r['load_average_at_end']:.1f}"),
  ]
  return '\n'.join(f'{name:<28}{value}' for name, value in rows)


def format_rate(stats: dict) -> str:
  """'median (min, max, steps)' of images/s stats."""
  return (f"{stats['median']:.1f} (min {stats['min']:.1f}, "
          f"max {stats['max']:.1f}, {stats['steps']} steps)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = config_from_flags()
  train.check_config(config)
  info = describe(config)
  results = measure(config)
  print(format_table(info, results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'info': info, 'results': results}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
