"""Experiment: ways of computing the Inception blocks' 1x1 convs, timed side by side.

  python -m benchmarks.levers --batch_size=128 --rounds=5

The model is left as it is; this times, forward and backward, the nine Inception
blocks of GoogLeNet at their 96x96 input shapes, with the block written out in
`lax` so that only the 1x1 convs differ between variants:

  separate:   the three 1x1 convs reading the block's input, one each (the model);
  fused:      one 1x1 conv with c1 + c2[0] + c3[0] outputs, then split;
  dot:        separate, each 1x1 conv as a matmul over channels;
  fused_dot:  fused, as one matmul.

Variants take turns round by round in one process, so a busy, shared machine
slows each alike; each variant's median over rounds is reported.
"""

import statistics
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp

flags.DEFINE_integer('batch_size', 128, 'Images per step.')
flags.DEFINE_integer('rounds', 5, 'Timed rounds; each times every variant once.')
FLAGS = flags.FLAGS

# (input H = W, input channels, c1, c2, c3, c4) of the nine blocks at 96x96.
BLOCKS = (
    (12, 192, 64, (96, 128), (16, 32), 32),
    (12, 256, 128, (128, 192), (32, 96), 64),
    (6, 480, 192, (96, 208), (16, 48), 64),
    (6, 512, 160, (112, 224), (24, 64), 64),
    (6, 512, 128, (128, 256), (24, 64), 64),
    (6, 512, 112, (144, 288), (32, 64), 64),
    (6, 528, 256, (160, 320), (32, 128), 128),
    (3, 832, 256, (160, 320), (32, 128), 128),
    (3, 832, 384, (192, 384), (48, 128), 128),
)
VARIANTS = ('separate', 'fused', 'dot', 'fused_dot')


def conv(x, w, padding: int):
  """NHWC x HWIO convolution, stride 1, symmetric padding."""
  return lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def pointwise(x, w, as_dot: bool):
  """A 1x1 conv, as a convolution or as a matmul over the channel axis."""
  return jnp.einsum('nhwc,cd->nhwd', x, w[0, 0]) if as_dot else conv(x, w, 0)


def reduce_1x1s(p, x, variant: str):
  """The three 1x1 convs that read the block's input, with their biases and ReLUs."""
  as_dot = variant.endswith('dot')
  names = ('w1', 'w2a', 'w3a')
  if variant.startswith('fused'):
    w = jnp.concatenate([p[n] for n in names], axis=-1)
    b = jnp.concatenate([p[n + '_b'] for n in names])
    y = jax.nn.relu(pointwise(x, w, as_dot) + b)
    sizes = [p[n].shape[-1] for n in names]
    return jnp.split(y, [sizes[0], sizes[0] + sizes[1]], axis=-1)
  return [jax.nn.relu(pointwise(x, p[n], as_dot) + p[n + '_b']) for n in names]


def inception(p, x, variant: str):
  """The chapter's Inception block; only its 1x1 reduce convs vary."""
  b1, b2, b3 = reduce_1x1s(p, x, variant)
  b2 = jax.nn.relu(conv(b2, p['w2b'], 1) + p['w2b_b'])
  b3 = jax.nn.relu(conv(b3, p['w3b'], 2) + p['w3b_b'])
  pooled = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))
  b4 = jax.nn.relu(pointwise(pooled, p['w4'], variant.endswith('dot')) + p['w4_b'])
  return jnp.concatenate([b1, b2, b3, b4], axis=-1)


def init_block(key, channels: int, c1, c2, c3, c4):
  """Random weights (HWIO) and zero biases of one block."""
  shapes = {'w1': (1, 1, channels, c1), 'w2a': (1, 1, channels, c2[0]),
            'w2b': (3, 3, c2[0], c2[1]), 'w3a': (1, 1, channels, c3[0]),
            'w3b': (5, 5, c3[0], c3[1]), 'w4': (1, 1, channels, c4)}
  keys = jax.random.split(key, len(shapes))
  params = {}
  for k, (name, shape) in zip(keys, shapes.items()):
    params[name] = jax.random.normal(k, shape) * 0.05
    params[name + '_b'] = jnp.zeros(shape[-1])
  return params


def make_step(variant: str):
  """Gradients of all nine blocks' summed outputs, wrt params and inputs."""
  def loss(params, inputs):
    return sum(jnp.sum(inception(p, x, variant)) for p, x in zip(params, inputs))
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def main(argv):
  del argv
  keys = jax.random.split(jax.random.key(0), 2 * len(BLOCKS))
  params, inputs = [], []
  for i, (size, channels, *widths) in enumerate(BLOCKS):
    params.append(init_block(keys[2 * i], channels, *widths))
    inputs.append(jax.random.normal(keys[2 * i + 1],
                                    (FLAGS.batch_size, size, size, channels)))
  steps = {v: make_step(v) for v in VARIANTS}
  reference = steps['separate'](params, inputs)
  for v in VARIANTS:  # Compiles, and checks each variant computes the same.
    grads = steps[v](params, inputs)
    error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)))
    print(f'{v:<10} gradients differ from separate by at most {error:.1e} '
          '(relative to each array\'s largest)')
  times = {v: [] for v in VARIANTS}
  for _ in range(FLAGS.rounds):
    for v in VARIANTS:
      start = time.perf_counter()
      jax.block_until_ready(steps[v](params, inputs))
      times[v].append(time.perf_counter() - start)
  base = statistics.median(times['separate'])
  print(f'nine Inception blocks, forward + backward, batch {FLAGS.batch_size}, '
        f'{FLAGS.rounds} rounds, device {jax.devices()[0].device_kind}')
  for v in VARIANTS:
    median = statistics.median(times[v])
    print(f'{v:<10} median {median:.3f} s (min {min(times[v]):.3f}), '
          f'speedup vs separate {base / median:.3f}')


if __name__ == '__main__':
  app.run(main)
