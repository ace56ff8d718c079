"""Experiment: the train step in float32 and in bfloat16, taking turns in one process.

  python -m benchmarks.dtype_ab --batch_size=32 --warmup=1 --steps=3

Separate runs of benchmarks/benchmark.py on a busy, shared machine see
different loads; here the two dtypes alternate step by step, so each sees the
same. Takes benchmark.py's flags (--config, --batch_size, --warmup, --steps).
"""

from absl import app
import jax
import jax.numpy as jnp

from benchmarks import benchmark
from googlenet_jax import train

DTYPES = ('float32', 'bfloat16')


def main(argv):
  del argv
  config = benchmark.config_from_flags()
  state = train.create_train_state(jax.random.key(config.seed), config,
                                   train.create_model(config))
  states = {d: train.replicate(benchmark.with_compute_dtype(state, jnp.dtype(d)))
            for d in DTYPES}
  p_train_step, _ = train.pmap_steps(config)
  rates = benchmark.alternate_steps(dict.fromkeys(DTYPES, p_train_step), states,
                                    benchmark.synthetic_batch(config.batch_size),
                                    config.batch_size)
  for d in DTYPES:
    print(f'{d:<9} train images/s {benchmark.format_rate(rates[d])}')
  ratio = rates['bfloat16']['median'] / rates['float32']['median']
  size = config.image_size
  print(f'bfloat16 / float32: {ratio:.2f} (batch {config.batch_size}, '
        f'{size}x{size}, {jax.devices()[0].device_kind})')


if __name__ == '__main__':
  app.run(main)
