"""Experiment: the train step with lax.conv and with convolutions as matmuls, taking turns.

  python -m benchmarks.conv_ab --config=configs/fmnist96.py --batch_size=128 \
      --warmup=2 --steps=5

Both forms of `config.conv_lowering` ('xla' and 'matmul') are compiled in one
process and alternate step by step, so a busy machine slows both alike. FLOP/s
use one count for both, XLA's of the convolutions as convolutions (see
benchmark.train_step_flops). Takes benchmark.py's flags.
"""

from absl import app
import jax

from benchmarks import benchmark
from googlenet_jax import train
from googlenet_jax.models import conv_lowering

FORMS = ('xla', 'matmul')


def main(argv):
  del argv
  config = benchmark.config_from_flags()
  state = train.create_train_state(jax.random.key(config.seed), config,
                                   train.create_model(config))
  batch = benchmark.synthetic_batch(config.batch_size)
  steps, states = {}, {}
  for form in FORMS:
    states[form] = train.replicate(state)
    with conv_lowering.using(form):  # Read while the step is traced.
      p_train_step, _ = train.pmap_steps(config)
      steps[form] = p_train_step.lower(states[form], batch).compile()
  flops = benchmark.train_step_flops(config, states['xla'], batch)
  rates = benchmark.alternate_steps(steps, states, batch, config.batch_size)
  for form in FORMS:
    gflops = flops * rates[form]['median'] / config.batch_size / 1e9
    print(f'{form:<7} train images/s {benchmark.format_rate(rates[form])}, '
          f'{gflops:.1f} GFLOP/s')
  size = config.image_size
  print(f'matmul / xla: {rates["matmul"]["median"] / rates["xla"]["median"]:.2f} '
        f'(batch {config.batch_size}, {size}x{size}, {jax.devices()[0].device_kind})')


if __name__ == '__main__':
  app.run(main)
