"""The chapter's biases against ours: the first steps' loss with each, side by side.

  python -m benchmarks.bias_init --config=configs/fmnist96.py --steps=500

The chapter's PyTorch `init_cnn` sets Xavier-uniform weights and leaves PyTorch's
default biases, uniform in +-1/sqrt(fan_in); this codebase's are zero. Both runs
start from the same kernels (the config's seed) and train on the same batches of
the real training data, taking turns step by step in one process; only the
biases differ. Prints the mean training loss of each window of --every steps.
"""

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import benchmark
from googlenet_jax import experiment
from googlenet_jax import sharding

FLAGS = flags.FLAGS
flags.DEFINE_integer('every', 50, 'Steps in each window of the printed mean loss.')
flags.DEFINE_integer('bias_seed', 0, 'Seed of the uniform biases.')


def torch_default_biases(params, seed: int):
  """`params` with each bias drawn as PyTorch's default: uniform in +-1/sqrt(fan_in).

  fan_in is the kernel's inputs: in_features for a Dense, kh * kw * in_channels
  for a Conv, as torch.nn.init._calculate_fan_in_and_fan_out counts them.
  """
  rng = np.random.default_rng(seed)

  def draw(module):
    if 'bias' not in module:
      return {name: draw(value) for name, value in module.items()}
    fan_in = int(np.prod(module['kernel'].shape[:-1]))
    bound = 1 / np.sqrt(fan_in)
    bias = rng.uniform(-bound, bound, module['bias'].shape).astype(module['bias'].dtype)
    return {**module, 'bias': bias}

  return draw(params)


def main(argv):
  config = benchmark.checked(benchmark.config_from_flags(argv))
  built = experiment.build(config)
  zero = built.initial_state()
  torch_like = zero.replace(params=torch_default_biases(zero.params, FLAGS.bias_seed))
  states = {'zero': sharding.replicate(zero), 'torch': sharding.replicate(torch_like)}
  losses = {name: [] for name in states}
  batches = benchmark.train_batches(built.dataset.splits['train'], config)
  for step in range(1, FLAGS.steps + 1):
    batch = next(batches)
    for name in states:
      states[name], metrics = built.p_train_step(states[name], batch)
      metrics = jax.device_get(sharding.unreplicate(metrics))
      losses[name].append(float(metrics['loss'] / metrics['count']))
    if step % FLAGS.every == 0:
      window = slice(step - FLAGS.every, step)
      print(f'steps {step - FLAGS.every + 1:>4}-{step:<4} mean loss: zero biases '
            f'{np.mean(losses["zero"][window]):.4f}, PyTorch default biases '
            f'{np.mean(losses["torch"][window]):.4f}', flush=True)


if __name__ == '__main__':
  app.run(main)
