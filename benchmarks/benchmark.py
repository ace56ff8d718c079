"""Speed of the real training step: images/s, FLOP/s, input pipeline, eval, memory.

Run from the repository root (a script, not a test):

  python -m benchmarks.benchmark --config=configs/fmnist96.py --batch_size=128 \
      --warmup=2 --steps=5 --json_out=/tmp/bench.json

Everything is measured in one process, so the ratios compare like with like:
a matmul peak on this device in the config's dtype, the pmapped train step of
`googlenet_jax.steps` on synthetic device-resident batches and on the real
Fashion-MNIST pipeline, the pipeline alone, the training loop's own host work,
and the eval step; the device's peak memory after the first train step beside what
XLA's analysis of the compiled step says it needs (the figure --mode=compile
reports for GPUs and TPUs). `--config.x=` overrides config fields, e.g.
`--config.dtype=bfloat16` (compute in bfloat16, params and optimizer state in
float32) or `--config.conv_lowering=xla`.
"""

import io
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
import ml_collections
from ml_collections import config_flags
import numpy as np

from googlenet_jax import experiment
from googlenet_jax import input_pipeline
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax.errors import UserError
from googlenet_jax.models import conv_lowering
from googlenet_jax.runtime import compilation_cache
from googlenet_jax.runtime import preemption
from googlenet_jax.runtime import progress
from googlenet_jax.tools import compile_report

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs',
                               'fmnist96.py')
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('batch_size', None,
                     'Global training batch; default: config.batch_size.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps of each kind before the timed ones.')
flags.DEFINE_integer('steps', 5, 'Timed steps in each run.')
flags.DEFINE_integer('host_steps', 50,
                     'Steps of the training loop timed without device work, and '
                     'batches of the pipeline timed alone.')
flags.DEFINE_integer('matmul_size', 4096, 'n of the n x n x n matmul peak.')
flags.DEFINE_bool('real_data', True, 'Also time the real Fashion-MNIST pipeline.')
flags.DEFINE_string('json_out', '', 'Where to write the results as JSON.')
# Host (numpy) and device-resident batches each compile the step once.
flags.register_validator('warmup', lambda n: n >= 1,
                         '--warmup must be at least 1: the first steps compile.')


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
  """Median FLOP/s of an n x n x n matmul in `dtype` on the default device."""
  # Drawn by a program that runs once: optimising its draw would add a second.
  a = train_state.jit_run_once(lambda key: jax.random.normal(key, (n, n), dtype))(
      jax.random.key(0))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def host_batch(batch_size: int, with_mask: bool = False) -> dict[str, np.ndarray]:
  """Random uint8 images and labels in numpy, in pmap's layout."""
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
  return batch


def synthetic_batch(batch_size: int, with_mask: bool = False):
  """`host_batch`, already on the devices."""
  return jax.device_put(host_batch(batch_size, with_mask), sharding.device_sharding())


def take_turns(step_fns: dict[str, Callable], states: dict,
               feeds: dict[str, Iterator], warmup: int,
               num_steps: int) -> tuple[dict, dict[str, list[float]]]:
  """Warm-up, then timed steps of every run in turn, one step each per round.

  Run `name` calls step_fns[name](state, batch) -> (state, outputs) on
  states[name] and the batches of feeds[name]. Taking turns step by step makes
  a busy, shared machine slow every run alike, so their ratios hold. Each step
  reads its run's next batch while it runs, as the training loop does.

  Returns:
    (the runs' final states, {name: seconds of each timed step}).
  """
  states = dict(states)
  batches = {name: next(feed) for name, feed in feeds.items()}
  seconds = {name: [] for name in step_fns}
  for i in range(warmup + num_steps):
    for name, step_fn in step_fns.items():
      start = time.perf_counter()
      states[name], outputs = step_fn(states[name], batches[name])
      batches[name] = next(feeds[name])
      jax.block_until_ready((states[name], outputs))
      if i >= warmup:
        seconds[name].append(time.perf_counter() - start)
  return states, seconds


def train_batches(source, config) -> Iterator:
  """The training loop's batches for this process, epoch after epoch."""
  for epoch in itertools.count():
    yield from input_pipeline.train_batches(
        source, global_batch_size=config.batch_size, seed=config.seed,
        epoch=epoch, process_index=0, process_count=1,
        num_local_devices=jax.local_device_count())


def pipeline_images_per_sec(source, config, num_batches: int) -> float:
  """Images/s from the in-memory training source to batches on the devices.

  Times `train_batches` through `prefetch_to_device`, as the training loop
  uses them with no step running, until the last batch is on the devices.
  """
  def put_on_devices(count: int) -> None:
    batches = itertools.islice(train_batches(source, config), count)
    for batch in input_pipeline.prefetch_to_device(batches):
      pass
    jax.block_until_ready(batch)

  put_on_devices(20)  # Untimed: the first transfers set up jax's path.
  start = time.perf_counter()
  put_on_devices(num_batches)
  return num_batches * config.batch_size / (time.perf_counter() - start)


def config_from_flags(argv: list[str]):
  """--config with --batch_size applied; a usage error for arguments that are not flags."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  return config


def checked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config`, if validation accepts it; else a one-line usage error, not a traceback."""
  try:
    validation.check_config(config)
    validation.check_batch_sizes(config, jax.device_count())
  except UserError as e:
    raise app.UsageError(str(e)) from e
  return config


def throughput(seconds: list[float], batch_size: int) -> dict[str, float]:
  """Median, min and max images/s over per-step durations."""
  rates = [batch_size / s for s in seconds]
  return {'median': statistics.median(rates), 'min': min(rates),
          'max': max(rates), 'steps': len(rates)}


def timed_eval(p_eval_step, state, batch_size: int) -> dict[str, float]:
  """Images/s of the eval step on a device-resident batch, after warm-up."""
  feed = itertools.repeat(synthetic_batch(batch_size, with_mask=True))
  _, seconds = take_turns({'eval': lambda s, b: (s, p_eval_step(s, b))},
                          {'eval': state}, {'eval': feed}, FLAGS.warmup,
                          FLAGS.steps)
  return throughput(seconds['eval'], batch_size)


def null_train_step(metrics) -> Callable:
  """A pmapped step that only returns its state and metrics shaped as `metrics`.

  `metrics` are a real step's (replicated) outputs: the loop then sums, shows
  and checks the same arrays as in training, with no device work to wait for.
  The metrics are ones, not zeros, so the progress bar's loss is not 0 / 0.
  """
  def step(state, batch):
    del batch
    return state, {k: jnp.ones(v.shape[1:], v.dtype) for k, v in metrics.items()}
  return jax.pmap(step, axis_name=sharding.AXIS, donate_argnums=(0,))


def host_ms_per_step(config, state, metrics, batches: Iterator) -> float:
  """Milliseconds per step of the training loop itself, the device work removed.

  The real loop (input, dispatch, metric sums, progress, `train.train_steps`)
  runs `null_train_step` over `batches` as one epoch of --host_steps steps, and
  asks after each step, as training does, whether to stop and whether a
  checkpoint is due; it saves nothing. Blocks on the final state and metric sums.
  """
  p_null_step = null_train_step(metrics)
  num_steps = FLAGS.host_steps

  def run(state, count):
    # Not a terminal: the bar prints no line, but fetches the loss every
    # progress.LOSS_EVERY_STEPS steps, as in a logged training run.
    bar = progress.Progress('host', count, config.batch_size,
                            stream=io.StringIO(), enabled=True)
    batches_on_devices = input_pipeline.prefetch_to_device(
        itertools.islice(batches, count))
    clock = train.CheckpointClock(config.checkpoint_every_minutes)
    with preemption.StopSignal() as stop:
      for step, state, total in train.train_steps(p_null_step, state,
                                                  batches_on_devices, 0, bar):
        stop.requested(step)
        train.checkpoint_due(config.checkpoint_every_steps, step,
                             steps_per_epoch=num_steps, num_steps=num_steps,
                             time_up=clock.time_up(step))
    jax.block_until_ready((state, total))
    return state

  state = run(state, 3)  # Compiles the null step and the metric sum.
  start = time.perf_counter()
  run(state, num_steps)
  return 1000 * (time.perf_counter() - start) / num_steps


def train_step_flops(config, built, state, batch, compiled) -> float:
  """XLA's FLOPs of the global train step, its convolutions counted as convolutions.

  The matmul form of the convolutions (config.conv_lowering, on a CPU) also
  multiplies the zero padding; counting the convolution form keeps FLOP/s
  comparable across forms, devices and with PyTorch. `compiled` is the step as
  it runs, counted as it is when it already takes the convolution form.
  `built` is the config's experiment.
  """
  if not conv_lowering.uses_matmuls(config.conv_lowering):
    return global_flops(compiled)
  state = state.replace(
      apply_fn=experiment.create_model(config, conv_form='xla').apply)
  return global_flops(steps.pmap_train_step(built.train_step).lower(state, batch).compile())


def global_flops(compiled) -> float:
  """XLA's FLOPs of a compiled pmapped step, over all local devices."""
  cost = compiled.cost_analysis()
  return float(cost['flops']) * jax.local_device_count()


def device_peak_memory() -> int | None:
  """Peak bytes in use on device 0, where the backend reports it (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get('peak_bytes_in_use') if stats else None


def measure(config) -> dict:
  """Every measurement, in one process, in the order of the table."""
  results = {}
  built = experiment.build(config, load_data=FLAGS.real_data)
  host_state = built.initial_state()
  p_train_step = built.p_train_step
  batch = synthetic_batch(config.batch_size)
  state = sharding.replicate(host_state)

  start = time.perf_counter()
  compiled = p_train_step.lower(state, batch).compile()  # Kept for the calls.
  results['compile_s'] = time.perf_counter() - start
  state, metrics = p_train_step(state, batch)
  jax.block_until_ready(metrics)
  results['time_to_first_step_s'] = time.perf_counter() - start
  # The device's peak so far is one train step's, which XLA's memory analysis
  # of the compiled step (as --mode=compile reports it) predicts.
  results['first_step_device_peak_bytes'] = device_peak_memory()
  results['compiled_needed_bytes'] = compile_report.needed_bytes(compiled.memory_analysis())
  results['matmul_peak_flops'] = matmul_peak(FLAGS.matmul_size, jnp.dtype(config.dtype))
  results['flops'] = train_step_flops(config, built, state, batch, compiled)

  # The state is donated to each step: every run takes its own copy.
  step_fns = {'train_synthetic': p_train_step}
  states = {'train_synthetic': state}
  feeds = {'train_synthetic': itertools.repeat(batch)}
  host_feed = itertools.repeat(host_batch(config.batch_size))
  if FLAGS.real_data:
    sources = built.dataset.splits
    step_fns['train_real'] = p_train_step
    states['train_real'] = sharding.replicate(host_state)
    # As the training loop feeds its steps: prefetched to the devices.
    feeds['train_real'] = input_pipeline.prefetch_to_device(
        train_batches(sources['train'], config))
    host_feed = train_batches(sources['train'], config)
    results['pipeline_images_per_sec'] = pipeline_images_per_sec(
        sources['train'], config, FLAGS.host_steps)
  states, seconds = take_turns(step_fns, states, feeds, FLAGS.warmup, FLAGS.steps)
  for name in step_fns:
    results[name] = throughput(seconds[name], config.batch_size)
  results['achieved_flops_per_s'] = (
      results['flops'] * results['train_synthetic']['median'] / config.batch_size)
  results['host_ms_per_step'] = host_ms_per_step(
      config, sharding.replicate(host_state), metrics, host_feed)
  results['eval'] = timed_eval(built.p_eval_step,
                               states['train_synthetic'], config.eval_batch_size)
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
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'dtype': config.dtype,
      'convolutions': ('matmuls' if conv_lowering.uses_matmuls(config.conv_lowering)
                       else 'lax.conv'),
      'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
      'image_size': config.image_size, 'warmup': FLAGS.warmup,
      'steps': FLAGS.steps, 'host_steps': FLAGS.host_steps,
      'load_average_at_start': os.getloadavg()[0],
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
        ('pipeline to devices img/s', f"{r['pipeline_images_per_sec']:.0f}"),
    ]
  rows += [
      # The loop with a step that does nothing: what training costs on the host.
      ('host ms per step', f"{r['host_ms_per_step']:.2f}"),
      ('eval images/s', format_rate(r['eval'])),
      ('GFLOP per train step', f"{r['flops'] / 1e9:.1f}"),  # Padding not counted.
      ('achieved GFLOP/s', f"{r['achieved_flops_per_s'] / 1e9:.1f}"),
      ('matmul peak GFLOP/s', f"{r['matmul_peak_flops'] / 1e9:.1f}"),
      ('% of matmul peak',
       f"{100 * r['achieved_flops_per_s'] / r['matmul_peak_flops']:.1f}"),
      ('host peak RSS (MiB)', f"{r['host_peak_rss_bytes'] / 2**20:.0f}"),
      ('device peak (MiB)', mib(r['device_peak_bytes'])),
      ('device peak, 1st step (MiB)', mib(r['first_step_device_peak_bytes'])),
      ("compile's need (MiB)", mib(r['compiled_needed_bytes'])),
      # Other work on the machine slows every number above.
      ('load average, start/end', f"{info['load_average_at_start']:.1f} / "
       f"{r['load_average_at_end']:.1f}"),
  ]
  return '\n'.join(f'{name:<28}{value}' for name, value in rows)


def mib(num_bytes: int | None) -> str:
  """Bytes in MiB, or 'n/a' where the backend does not report them (a CPU)."""
  return 'n/a' if num_bytes is None else f'{num_bytes / 2**20:.0f}'


def format_rate(stats: dict) -> str:
  """'median (min, max, steps)' of images/s stats."""
  return (f"{stats['median']:.1f} (min {stats['min']:.1f}, "
          f"max {stats['max']:.1f}, {stats['steps']} steps)")


def main(argv):
  config = checked(config_from_flags(argv))
  compilation_cache.enable(config.compilation_cache_dir)
  info = describe(config)
  results = measure(config)
  print(format_table(info, results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'info': info, 'results': results}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
